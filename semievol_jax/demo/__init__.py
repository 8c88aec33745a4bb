"""`semievol demo`, at the top of the package: the method, its ablations and a sweep over
seeds on the synthetic world (`pipeline.data.synth`) with a tiny pretrained base
(`train.pretrain`)."""
