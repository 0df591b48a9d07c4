"""Tasks with known answers, generated offline: prompt files for online training with verifiable rewards."""
