"""The verbs as a user runs them: export of a stopped and of a finished run, generate, and bad data failing early."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import FTL, REPO, write_config

pytestmark = pytest.mark.integration


def test_export_stopped_run_then_generate_and_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 6}, checkpoint={"every_steps": 2}
    )
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="4")
    stopped = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert stopped.returncode == 3, stopped.stderr[-2000:]

    export = subprocess.run(
        [*FTL, "export", str(tmp_path / "run"), "--merge"], cwd=REPO, capture_output=True, text=True
    )
    assert export.returncode == 0, export.stderr[-2000:]
    exported = tmp_path / "run" / "exports" / "step-4"
    assert f"exported step 4 (from {tmp_path / 'run' / 'checkpoints' / 'step-4'}) to {exported}" in export.stdout
    assert not (tmp_path / "run" / "final").exists()  # final/ is the end of a run: export is not
    assert (exported / "adapter" / "adapter_config.json").exists()
    assert (exported / "merged" / "model.safetensors").exists()
    assert (exported / "merged" / "chat_template.jinja").exists() or "chat_template" in (
        exported / "merged" / "tokenizer_config.json"
    ).read_text()
    # How this machine loaded the tokenizer (offline: local_files_only) does not travel with the
    # model (trial 62b: transformers 5 wrote it into every export's tokenizer_config.json).
    for folder in ("adapter", "merged"):
        written = json.loads((exported / folder / "tokenizer_config.json").read_text())
        assert not {"is_local", "local_files_only"} & set(written), written
        assert written["eos_token"] == json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["eos_token"]
    listing = subprocess.run([*FTL, "runs", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert listing.returncode == 0 and " resumable " in listing.stdout, listing.stdout

    generate = subprocess.run(
        [*FTL, "generate", str(exported), "--prompt", "What is the capital of Zorblat?", "--max-new-tokens", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert generate.returncode == 0, generate.stderr[-2000:]
    # Same greedy continuation as stock transformers gives for the merged model.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exported / "merged"))
    model = AutoModelForCausalLM.from_pretrained(str(exported / "merged")).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Zorblat?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=5, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert generate.stdout == expected + "\n"
    # The adapter folder carries the merged model's generation config (stop at the end of turn too),
    # for stock generate on base + adapter (PEFT does not read it; GenerationConfig does).
    from transformers import GenerationConfig

    adapter_generation = GenerationConfig.from_pretrained(str(exported / "adapter"))
    assert adapter_generation.eos_token_id == model.generation_config.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|end|>") in adapter_generation.eos_token_id
    # The adapter folder itself is a model to generate with (base + adapter: the same text), and a
    # checkpoint folder is pointed to the export command that takes it.
    prompt = ["--prompt", "What is the capital of Zorblat?", "--max-new-tokens", "5"]
    from_adapter = subprocess.run(
        [*FTL, "generate", str(exported / "adapter"), *prompt], cwd=REPO, capture_output=True, text=True
    )
    assert from_adapter.returncode == 0 and from_adapter.stdout == expected + "\n", from_adapter.stderr[-2000:]
    step_4 = tmp_path / "run" / "checkpoints" / "step-4"
    from_checkpoint = subprocess.run([*FTL, "generate", str(step_4), *prompt], cwd=REPO, capture_output=True, text=True)
    assert from_checkpoint.returncode == 2
    # Exported already (above): that export is named, not the command that made it (trial 39a).
    assert f"{step_4} is a checkpoint, not a model; it was exported to {exported}: pass that directory" in (
        from_checkpoint.stderr
    )

    # A config whose model the checkpoint does not fit (another LoRA rank) is an input error that
    # says what changed, before any worker starts (the manifest records the method), and leaves the
    # checkpoints as they were.
    refused = subprocess.run([*FTL, "train", str(config), "method.lora.r=4"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "cannot load (method.lora.r: 8 -> 4)" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr + refused.stdout
    # One the launcher cannot tell from the manifest (all-linear against a list of names) is the
    # workers' to find, tensor by tensor, and said the same way.
    refused = subprocess.run(
        [*FTL, "train", str(config), "method.lora.target_modules=[q_proj]"], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "does not fit this run's model" in refused.stderr, refused.stderr[-2000:]
    assert '(method.lora.target_modules: "all-linear" -> ["q_proj"])' in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    # The refused start trained nothing with its config: config.yaml is the run's own again.
    snapshot = tmp_path / "run" / "config.yaml"
    assert yaml.safe_load(snapshot.read_text())["method"]["lora"]["r"] == 8
    # A config.yaml that no longer matches the checkpoint (edited by hand): an export builds the
    # model the checkpoint was written with all the same, from the config its manifest records.
    edited = yaml.safe_load(snapshot.read_text())
    edited["method"]["lora"]["r"] = 4
    snapshot.write_text(yaml.safe_dump(edited, sort_keys=False))
    again = subprocess.run(
        [*FTL, "export", str(tmp_path / "run"), "--out", str(tmp_path / "again")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "exported with that one (method.lora.r: 4 -> 8)" in again.stderr
    first, second = (
        load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (exported, tmp_path / "again")
    )
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    # The exported run is still resumable: the same command finishes it. With a changed setting it
    # resumes too, and says which setting changed (the manifest records the config it was written with).
    resumed = subprocess.run(
        [*FTL, "train", str(config), "training.learning_rate=0.002"], cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "written with a different config (training.learning_rate: 0.005 -> 0.002)" in resumed.stdout + resumed.stderr
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").exists()
    # config.yaml now holds the new rate only: the change is kept where the run is read later (the
    # start record, summary.json, `ftl runs`, the report), not only in a worker's log.
    change = "training.learning_rate: 0.005 -> 0.002"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_with_config_changes"] == [{"step": 4, "config_change": change}]
    assert f"resumed at step 4 under another config ({change}): the loss and the scores span" in resumed.stdout
    listing = subprocess.run([*FTL, "runs", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True)
    assert f"run: resumed at step 4 under another config ({change})" in listing.stdout, listing.stdout
    report = subprocess.run(
        [*FTL, "report", str(tmp_path / "run"), "--out", str(tmp_path / "report")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    page = (tmp_path / "report" / "index.html").read_text()
    assert html.escape(f"resumed at step 4 under another config ({change})") in page
    assert json.loads((tmp_path / "report" / "data.json").read_text())["runs"][0]["config_changed_at"] == [4]


def test_export_of_a_finished_run_never_replaces_its_final_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    # Finishes at step 5; the newest checkpoint is step 4 (as a Ray run keeps no checkpoint of the last step).
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run,
        training={"max_steps": 5},
        checkpoint={"every_steps": 2},
        output={"save_merged": False},
    )
    trained = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    adapter = run / "final" / "adapter" / "adapter_model.safetensors"
    finished_with = load_file(str(adapter))

    plain = subprocess.run([*FTL, "export", str(run)], cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "already holds the finished run's model (step 5)" in plain.stdout
    merged = subprocess.run([*FTL, "export", str(run), "--merge"], cwd=REPO, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert f"exported step 5 (from {run / 'final' / 'adapter'}) to {run / 'final'}" in merged.stdout
    assert (run / "final" / "merged" / "model.safetensors").exists()
    after = load_file(str(adapter))
    assert after.keys() == finished_with.keys() and all(torch.equal(after[k], finished_with[k]) for k in after)

    older = subprocess.run(
        [*FTL, "export", str(run), "--checkpoint", str(run / "checkpoints" / "step-4")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert older.returncode == 0, older.stderr[-2000:]
    assert f"exported step 4 (from {run / 'checkpoints' / 'step-4'}) to {run / 'exports' / 'step-4'}" in older.stdout
    from_step_4 = load_file(str(run / "exports" / "step-4" / "adapter" / "adapter_model.safetensors"))
    assert not all(torch.equal(from_step_4[k], finished_with[k]) for k in from_step_4)
    after = load_file(str(adapter))
    assert all(torch.equal(after[k], finished_with[k]) for k in after)  # final/ untouched
    # By name, as the run lists its checkpoints or the console prints them (trials 41b, 42a: looked for in
    # the current directory).
    for name in ("step-4", "4", "checkpoints/step-4"):
        by_name = subprocess.run(
            [*FTL, "export", str(run), "--checkpoint", name], cwd=REPO, capture_output=True, text=True
        )
        assert by_name.returncode == 0 and "exported step 4" in by_name.stdout, by_name.stderr[-2000:]
    step_4 = ["--checkpoint", str(run / "checkpoints" / "step-4")]
    export = [*FTL, "export", str(run), *step_4]
    assert subprocess.run([*export, "--merge"], cwd=REPO, capture_output=True, text=True).returncode == 0
    # Again without --merge over that export: its merged/ is rewritten too, and the line says why (trial 39a).
    again = subprocess.run(export, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "(merged/ too: the export there before had one" in again.stdout, again.stdout
    into_final = subprocess.run(
        [*FTL, "export", str(run), "--checkpoint", str(run / "checkpoints" / "step-4"), "--out", str(run / "final")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert into_final.returncode == 2 and "written by the run itself" in into_final.stderr
    missing = subprocess.run(  # a typo, or a step keep_last deleted: not "the write did not finish"
        [*FTL, "export", str(run), "--checkpoint", str(run / "checkpoints" / "step-99")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "step-99 does not exist; this run's checkpoints: " in missing.stderr
    assert "step-4" in missing.stderr and "did not finish" not in missing.stderr
    final = subprocess.run(
        [*FTL, "export", str(run), "--checkpoint", str(run / "final")], cwd=REPO, capture_output=True, text=True
    )
    assert final.returncode == 2 and "is the run's final model, not a checkpoint" in final.stderr, final.stderr
    # Another step's export at --out is replaced, and said (trial 62c: without a word); the same one again is not.
    out = ["--out", str(tmp_path / "shipped")]
    assert subprocess.run([*FTL, "export", str(run), *out], cwd=REPO, capture_output=True, text=True).returncode == 0
    for replaced in (True, False):
        over = subprocess.run([*export, *out], cwd=REPO, capture_output=True, text=True)
        assert over.returncode == 0, over.stderr[-2000:]
        said = f"; it replaced the export of step 5 (from {run / 'final'}) there"
        assert (said in over.stdout) == replaced and ("replaced" in over.stdout) == replaced, over.stdout


def test_export_writes_only_its_own_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--out's neighbours are the user's (model.old is a common backup name), a file is no export
    folder, and another run's final/ is that run's: an export touches none of them."""
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, run, training={"max_steps": 2}, checkpoint={"every_steps": 2}
    )
    trained = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    step_2 = str(run / "checkpoints" / "step-2")

    def export(out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FTL, "export", str(run), "--checkpoint", step_2, "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )

    models = tmp_path / "models"
    for backup in ("mine.old", "mine.tmp"):
        (models / backup).mkdir(parents=True)
        (models / backup / "notes.txt").write_text("keep me")
    for _ in range(2):  # a new folder, then over the earlier export
        exported = export(models / "mine")
        assert exported.returncode == 0, exported.stderr[-2000:]
    assert (models / "mine" / "adapter" / "adapter_model.safetensors").is_file()
    assert oct((models / "mine").stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert sorted(p.name for p in models.iterdir()) == ["mine", "mine.old", "mine.tmp"]  # no debris either
    assert all((models / b / "notes.txt").read_text() == "keep me" for b in ("mine.old", "mine.tmp"))

    a_file = tmp_path / "weights.bin"
    a_file.write_text("mine")
    refused = export(a_file)
    assert refused.returncode == 2 and f"{a_file} exists and is a file" in refused.stderr, refused.stderr[-2000:]
    assert a_file.read_text() == "mine" and not (tmp_path / "weights.bin.old").exists()

    other = tmp_path / "other-run"  # another run's directory, as ftl marks one, with its finished model
    (other / "final").mkdir(parents=True)
    (other / ".ftl-run").write_text("")
    (other / "final" / "export.json").write_text('{"method": "full"}')
    into_other = export(other / "final")
    assert into_other.returncode == 2 and f"inside another run directory ({other})" in into_other.stderr
    assert sorted(p.name for p in (other / "final").iterdir()) == ["export.json"]

    # A folder nobody may write in (trial 60b: a PermissionError traceback; /proc stops root too).
    unwritable = export(Path("/proc/ftl-export"))
    assert unwritable.returncode == 2 and "--out /proc/ftl-export: cannot write in /proc" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr, unwritable.stderr[-2000:]
    # Another run's checkpoint is exported from that run, not filed under this one's exports/ as a
    # step it never reached (trial 60b).
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    foreign = subprocess.run(
        [*FTL, "export", str(run), "--checkpoint", str(copy / "checkpoints" / "step-2")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert foreign.returncode == 2, foreign.stderr[-2000:]
    assert (
        f"is not a checkpoint of {run}" in foreign.stderr
        and f"`ftl export {copy} --checkpoint step-2`" in foreign.stderr
    )
    assert not (run / "exports").exists()
    # Its `latest` pointer too (trial 60c: this run's own latest was exported without a word).
    foreign = subprocess.run(
        [*FTL, "export", str(run), "--checkpoint", str(copy / "checkpoints" / "latest")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert foreign.returncode == 2 and f"is not a checkpoint of {run}" in foreign.stderr, foreign.stderr[-2000:]
    assert not (run / "exports").exists()
    through_a_file = export(a_file / "sub")  # trial 60c: a FileExistsError traceback
    assert through_a_file.returncode == 2 and f"{a_file} is a file, not a folder" in through_a_file.stderr
    # Inside its own run only under exports/, and exports/step-N holds step N (trial 62b: an export
    # in checkpoints/step-4/ went when keep_last deleted the checkpoint; step 8 filed as step-4).
    in_a_checkpoint = export(run / "checkpoints" / "step-2" / "mine")
    assert in_a_checkpoint.returncode == 2, in_a_checkpoint.stderr[-2000:]
    assert f"{run / 'checkpoints' / 'step-2' / 'mine'} is inside the run directory {run}" in in_a_checkpoint.stderr
    mislabelled = export(run / "exports" / "step-9")
    assert mislabelled.returncode == 2, mislabelled.stderr[-2000:]
    said = f"{run / 'exports' / 'step-9'} is where ftl keeps step 9's export, and this is step 2's"
    assert said in mislabelled.stderr and not (run / "exports" / "step-9").exists(), mislabelled.stderr[-2000:]
    assert not (run / "checkpoints" / "step-2" / "mine").exists()
    named = export(run / "exports" / "mine")  # a name of the user's under exports/ is theirs to choose
    assert named.returncode == 0 and (run / "exports" / "mine" / "export.json").is_file(), named.stderr[-2000:]
    nested = export(run / "exports" / "mine" / "sub")  # inside another export, replaced with it (trial 62c)
    assert nested.returncode == 2 and "is inside the run directory" in nested.stderr, nested.stderr[-2000:]
    # The finished run's own model: final/ holds it (trial 62c: sent to an exports/step-N never written).
    finished = subprocess.run(
        [*FTL, "export", str(run), "--out", str(run / "checkpoints" / "mine")], cwd=REPO, capture_output=True, text=True
    )
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert f"its final/ holds the finished model ({run / 'final'})" in finished.stderr, finished.stderr[-2000:]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_malformed_row_stops_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Q?"}]}) + "\n")
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", data={"train": str(data), "validation": None}
    )
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad.jsonl line 2: no assistant message" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    # `ftl runs` gives the worker's reason, not "worker 0 exited with code 2"
    failure = json.loads((tmp_path / "run" / "failure.json").read_text())
    assert "bad.jsonl line 2: no assistant message" in failure["reason"] and failure["exit_code"] == 2

    # skipped and counted, in the training file and in a validation file of its own
    validation = tmp_path / "bad-validation.jsonl"
    validation.write_text(data.read_text())
    skipped = subprocess.run(
        [
            *FTL,
            "train",
            str(config),
            "data.skip_bad_rows=true",
            "training.max_steps=1",
            f"data.validation={validation}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["train_skipped_bad"] == 1 and summary["data"]["validation_skipped_bad"] == 1
    note = "training examples: 1 skipped as malformed; validation examples: 1 skipped as malformed"
    assert note in skipped.stdout, skipped.stdout[-2000:]
