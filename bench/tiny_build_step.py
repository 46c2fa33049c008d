"""Time one training step of the tiny model's build (U-Net + text encoder, batch 64, fp32) and show
where it goes.

    python bench/tiny_build_step.py --threads 2            # seconds per step
    python bench/tiny_build_step.py --threads 2 --classic  # diffusers' classic attention instead of SDPA
    python bench/tiny_build_step.py --threads 2 --profile  # torch profiler, top operators
    OMP_WAIT_POLICY=PASSIVE python bench/tiny_build_step.py --threads 2

Random weights and inputs: the step's cost does not depend on what the weights are.
"""

import argparse
import time

import torch
from diffusers.models.attention_processor import AttnProcessor

from loracraft.models.tiny.architecture import LATENT_SIZE, MAX_TOKENS, build_text_encoder, build_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classic", action="store_true", help="plain bmm + softmax attention")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet, text_encoder = build_unet(), build_text_encoder(100, 0, 1, 1)
    if args.classic:
        unet.set_attn_processor(AttnProcessor())
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=1e-3)
    latents = torch.randn(args.batch, 4, LATENT_SIZE, LATENT_SIZE)
    ids = torch.randint(0, 100, (args.batch, MAX_TOKENS))
    timesteps = torch.randint(0, 1000, (args.batch,))

    def step() -> None:
        prediction = unet(latents, timesteps, text_encoder(ids).last_hidden_state).sample
        optimizer.zero_grad(set_to_none=True)
        (prediction - latents).pow(2).mean().backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(3):
                step()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    print(
        f"threads {args.threads}, batch {args.batch}, classic attention {args.classic}: {seconds:.3f} s/step"
    )


if __name__ == "__main__":
    main()
