"""One fine-tuning cycle: the state machine (OBSERVE → PLAN → TRAIN → VALIDATE → PROMOTE | REJECT) and the
trainer protocol it drives. Every transition is committed, so a killed process resumes or cleanly fails the cycle."""
