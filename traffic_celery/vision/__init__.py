"""The vision side: detection (ultralytics YOLO), tracking (ByteTrack), grouping of nearby road users, their
motion features and the scheduler that decides when a group is worth an LLM call. No I/O beyond the model."""
