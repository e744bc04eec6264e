"""Test support: stand-in trainers and the processes the crash tests kill. Not part of the installed package."""
