"""The files a run will write, known before it starts (`loracraft plan`): kohya's names, moments and
removal rules, followed step by step as the loop calls them."""

from loracraft.config.schema import TrainConfig
from loracraft.data.plan import count_steps
from loracraft.sampling.prompts import SamplePrompt
from loracraft.training.run_files import format_run_files, kept_files, planned_files


def steps(batches_per_epoch: int, epochs: int | None = None, max_steps: int | None = None):
    return count_steps(
        batches_per_epoch,
        gradient_accumulation_steps=1,
        num_processes=1,
        max_train_epochs=epochs,
        max_train_steps=max_steps,
    )


def prompt(index: int, seed: int | None = None) -> SamplePrompt:
    return SamplePrompt("a toy", None, 64, 64, seed, 20, 7.0, None, index)


def test_the_saves_and_removals_are_those_a_real_run_leaves():
    # The run of tests/integration/test_saving.py, whose folder was checked after training: 4 steps per
    # epoch, 4 epochs, files every epoch (keeping 2) and every 3 steps (keeping 5 steps back), states with
    # them (keeping the step states of the last 2 steps).
    config = TrainConfig(
        output_name="toy", save_every_n_epochs=1, save_last_n_epochs=2, save_every_n_steps=3,
        save_last_n_steps=5, save_state=True, save_last_n_steps_state=2,
    )  # fmt: skip
    files = planned_files(config, steps(4, epochs=4))
    assert sorted(kept_files(files)) == [
        "toy-000002-state", "toy-000002.safetensors", "toy-000003-state", "toy-000003.safetensors",
        "toy-state", "toy-step00000012.safetensors", "toy-step00000015-state", "toy-step00000015.safetensors",
        "toy.log", "toy.safetensors", "toy.toml",
    ]  # fmt: skip
    by_name = {planned.name: planned for planned in files}
    assert by_name["toy-step00000003.safetensors"].removed == "after step 9"
    assert by_name["toy-000001.safetensors"].written == "after epoch 1 (step 4)"
    assert by_name["toy-000001.safetensors"].removed == "after epoch 3 (step 12)"
    assert by_name["toy.safetensors"].written == "at the end (step 16)"


def test_the_last_step_saves_only_the_final_file():
    # 10 steps of 4 a epoch: the loop leaves at step 10, in epoch 3, before any hook: no epoch-3 file, no
    # step-10 file, and the final state with --save_state_on_train_end.
    config = TrainConfig(
        output_name="toy", save_every_n_epochs=1, save_every_n_steps=5, save_state_on_train_end=True,
        save_model_as="ckpt",
    )  # fmt: skip
    names = kept_files(planned_files(config, steps(4, max_steps=10)))
    assert names == [
        "toy.toml", "toy.log", "toy-000001.ckpt", "toy-step00000005.ckpt", "toy-000002.ckpt", "toy-state",
        "toy.ckpt",
    ]  # fmt: skip


def test_sample_images_at_kohyas_moments_with_the_time_left_open(tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    config = TrainConfig(
        output_name="toy", sample_prompts=str(prompts_file), sample_every_n_epochs=2, sample_at_first=True
    )
    files = planned_files(config, steps(3, epochs=4), (prompt(0), prompt(1, seed=42)))
    samples = [(planned.name, planned.written) for planned in files if planned.name.startswith("sample/")]
    assert samples == [
        ("sample/toy_e000000_00_*.png", "before the first step"),
        ("sample/toy_e000000_01_*_42.png", "before the first step"),
        ("sample/toy_e000002_00_*.png", "after epoch 2 (step 6)"),
        ("sample/toy_e000002_01_*_42.png", "after epoch 2 (step 6)"),
        ("sample/toy_e000004_00_*.png", "after epoch 4 (step 12)"),
        ("sample/toy_e000004_01_*_42.png", "after epoch 4 (step 12)"),
    ]


def test_a_resumed_run_lists_what_it_writes_from_its_state_on():
    config = TrainConfig(
        output_name="toy", save_every_n_epochs=1, sample_prompts="p.txt", sample_every_n_steps=2
    )
    files = planned_files(config, steps(4, epochs=3), (prompt(0),), resumed_at=5)
    assert [planned.name for planned in files] == [
        "toy.toml", "toy.log", "sample/toy_000006_00_*.png", "toy-000002.safetensors",
        "sample/toy_000008_00_*.png", "sample/toy_000010_00_*.png", "sample/toy_000012_00_*.png",
        "toy.safetensors",
    ]  # fmt: skip


def test_the_listing_names_each_file_and_when_it_goes(tmp_path):
    config = TrainConfig(output_name="toy", save_every_n_epochs=1, save_last_n_epochs=1)
    lines = format_run_files(planned_files(config, steps(2, epochs=3)), tmp_path, shown=3)
    assert lines == [
        f"Files (in {tmp_path})",
        "  toy.toml                at the start (its first line says how the run ended)",
        "  toy.log                 at the start, a line per epoch",
        "  toy-000002.safetensors  after epoch 2 (step 4)",
        "  ... and 1 more",
        "  written and removed again on the way (1):",
        "  toy-000001.safetensors  after epoch 1 (step 2); removed after epoch 2 (step 4)",
    ]
