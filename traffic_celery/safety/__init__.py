"""The traffic-safety layer: where (zones, masks, the ground plane), how close and how fast (near-miss metrics),
and what happened (incidents with a snapshot and a clip, kept in the SQL history)."""
