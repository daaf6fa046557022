"""The workflows above the lenses: training a model from scratch (`trainer`) or a LoRA adapter (`lora`) to what a
corpus states, the fact world they are measured on (`world`), and the curation loop (`curate`: edit the corpus,
retrain, re-ask). They use the core and the lenses; the app, the CLI, the story (`attrilens.demo`) and the
benchmarks use them.
"""
