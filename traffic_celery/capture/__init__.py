"""The capture side: video sources that reconnect (`sources`), one camera's loop (`loop`: detect, group, publish,
enqueue) and the capture node that runs the loops of the cameras it holds a lease on (`node`)."""
