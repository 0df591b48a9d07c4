"""preftune vs TRL's DPOTrainer, the parts of ``benchmarks/dpo_vs_trl.py`` (its docstring says what it does).

    settings    what every worker must agree on (JSON round-trips to the subprocesses)
    workload    the models and the pairs: synthetic lengths, or chat-shaped (UltraFeedback-like) lengths
    frameworks  each framework's configuration from the shared settings
    check       the equivalence check that gates the timing
    workers     one training run per fresh process, with its clock and memory recorder
    flops       the work a run does, in FLOPs, for the utilisation against the matmul peak
    report      the markdown table and the JSON summary
    cli         the command line
"""
