"""Pure decision functions: recorded history + now + config in, a decision with its reasons out."""
