"""Shared by the demo tests: overrides that shrink the demo to seconds."""

# A world and models small enough for a test; the code path is the demo's.
REDUCED = [
    "data.synth.num_people=6", "data.synth.labeled_people=3", "data.synth.num_practice_people=2",
    "data.synth.num_labeled=8", "data.synth.num_unlabeled=24", "data.synth.num_test=8",
    "data.synth.bios_per_person=2", "data.synth.quizzes_per_practice_person=2",
    "base.pretrain.vocab_size=320", "base.pretrain.hidden_size=32",
    "base.pretrain.num_heads=2", "base.pretrain.num_kv_heads=1",
    "base.pretrain.intermediate_size=64", "base.pretrain.seq_len=64",
    "base.pretrain.batch_size=4", "base.pretrain.steps=8",
    "sft.train.epochs=1", "final.train.epochs=1", "propose.n=2",
    # a 320-entry vocabulary splits the statement options into many pieces
    "sft.train.cutoff_len=256", "final.train.cutoff_len=256",
    "sft.train.length_buckets=[256]", "final.train.length_buckets=[256]",
]
