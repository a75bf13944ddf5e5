"""Two CPU processes under torchrun (gloo) train one decoder as DDP replicas."""

import json
import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

SCRIPT = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
import torch.distributed as dist
from inversionview.decoder.data import ActivationStream
from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
from inversionview.probed import build_probed

torch.set_num_threads(1)
out = Path(sys.argv[1])
probed = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
config = DecoderTrainingConfig(out=out / "run", examples=16 * 2 * 5, seed=2, batch_size=16,
                               eval_every_seconds=1e9, eval_queries_per_site=1,
                               eval_samples_per_query=2,
                               decoder_overrides=dict(d_model=32, n_heads=2, d_mlp=64,
                                                      n_condition_blocks=2))
decoder = train_decoder(probed, config, show_progress=False)
rank = int(__import__("os").environ["RANK"])
save_file(decoder.state_dict(), str(out / f"rank{rank}.safetensors"))
"""


def test_two_cpu_ranks_keep_identical_weights(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own process group, so that a timeout ends the ranks too, not only the launcher
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "train.py"), str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        _, stderr = launcher.communicate()
        raise AssertionError(f"the 2-rank run did not finish in 300 s: {stderr[-3000:]}") from None
    assert launcher.returncode == 0, stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    manifest = json.loads((tmp_path / "run" / "decoder.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] == 5
    assert manifest["examples"] == 160
    # each rank drew its own stream: both were checkpointed, and they differ
    record = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    streams = record["streams"]
    assert len(streams) == 2 and streams[0]["pool_start_state"] != streams[1]["pool_start_state"]
    # the replicas trained: weights moved away from the initialisation
    from inversionview.decoder.train import build_decoder
    from inversionview.probed import build_probed
    probed = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    initial = build_decoder(probed, 2, d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2,
                            dropout=0.0).state_dict()
    assert not torch.equal(initial["blocks.0.mlp.0.weight"], rank0["blocks.0.mlp.0.weight"])
