"""The config hash in checkpoint manifests names what the training result depends on: where the run
directory is, how often it saves or logs and how it resumes do not change it; training settings do."""

from __future__ import annotations

from trainer.config import TrainerConfig
from trainer.config_hash import config_changes, config_hash, config_written_with, result_part, result_values
from trainer.dict_merge import deep_merged


def _cfg(**sections: dict) -> TrainerConfig:
    raw = {"model": {"path": "/models/m"}, "data": {"train": "/data/train.jsonl"}, "output": {"dir": "/runs/a"}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return TrainerConfig.model_validate(raw)


def test_settings_that_do_not_change_the_result_keep_the_hash() -> None:
    base = config_hash(_cfg())
    fsdp = config_hash(_cfg(parallel={"strategy": "fsdp"}))
    same = [
        _cfg(output={"dir": "/elsewhere/copy-of-a", "save_merged": False}),
        _cfg(
            checkpoint={"every_steps": 7, "keep_last": 5, "resume": "/runs/a/checkpoints/step-15", "move_aside": True}
        ),
        _cfg(training={"progress_bar": False, "log_every_steps": 10, "watchdog_timeout_s": 60}),
        _cfg(data={"train": "/data/train.jsonl", "cache_dir": "/tmp/cache"}),
        _cfg(training={"loss": {"chunked": False, "chunk_tokens": 64}}),  # the same loss, computed another way
        _cfg(eval={"every_steps": 10, "at_start": False}),  # evaluating more often trains the same weights
    ]
    assert [config_hash(cfg) for cfg in same] == [base] * len(same)
    # FSDP2 keeping its gathered weights after forward: memory against speed, the same maths (trial 41b).
    assert config_hash(_cfg(parallel={"strategy": "fsdp", "reshard_after_forward": False})) == fsdp


def test_evaluation_cadence_counts_when_early_stopping_judges_by_it() -> None:
    stopping = {"early_stopping": {"enabled": True, "patience": 2}}
    held_out = {"validation_split": 0.1}
    judged = config_hash(_cfg(transfer=stopping, data=held_out, eval={"every_steps": 10}))
    assert judged != config_hash(_cfg(transfer=stopping, data=held_out, eval={"every_steps": 20}))
    assert config_hash(_cfg(eval={"max_samples": 5})) != config_hash(_cfg())  # other scores are reported


def test_a_manifest_of_an_ftl_that_hashed_the_eval_cadence_reads_as_unchanged() -> None:
    recorded = result_values(_cfg())
    recorded["eval"]["every_steps"] = 0  # what an earlier ftl recorded: the cadence was hashed then
    assert config_changes(result_part(recorded), result_values(_cfg(eval={"every_steps": 10}))) == []


def test_settings_that_change_the_result_change_the_hash() -> None:
    base = config_hash(_cfg())
    different = [
        _cfg(training={"learning_rate": 1e-3}),
        _cfg(training={"seed": 7}),
        _cfg(method={"type": "full"}),
        _cfg(data={"train": "/data/other.jsonl"}),
        _cfg(model={"path": "/models/other"}),
        _cfg(parallel={"strategy": "fsdp"}),
        _cfg(training={"optimizer": "adamw_8bit"}),
    ]
    hashes = [config_hash(cfg) for cfg in different]
    assert base not in hashes and len(set(hashes)) == len(hashes)


def test_a_changed_config_is_described_key_by_key() -> None:
    before = result_values(_cfg(training={"micro_batch_size": 4, "learning_rate": 1e-3}))
    after = result_values(_cfg(training={"micro_batch_size": 2, "learning_rate": 1e-3}, data={"packing": False}))
    assert config_changes(before, after) == ["data.packing: true -> false", "training.micro_batch_size: 4 -> 2"]
    assert config_changes(after, after) == []
    assert config_changes(before, {**after, "extra": {"k": 1}}, limit=1) == [
        "data.packing: true -> false",
        "and 2 more",
    ]
    # data.mixture is compared source by source, a source known by its train file (trial 41a: a
    # removed source read as "data.mixture[1].train: b -> c" and six more position diffs)
    a, b, c = ({"name": n, "train": f"{n}.jsonl", "weight": 1.0, "format": "chat"} for n in "abc")
    mixed = {"data": {"mixture": [a, b, c]}}
    assert config_changes(mixed, {"data": {"mixture": [a, {**b, "weight": 3.0}, c]}}) == [
        "data.mixture weights: b 1 -> 3"
    ]
    assert config_changes(mixed, {"data": {"mixture": [a, c]}}) == ["data.mixture: removed b (b.jsonl)"]
    doubled = [{**s, "weight": 2.0} for s in (a, b, c)]  # the same proportions: the same stream
    assert config_changes(mixed, {"data": {"mixture": doubled}}) == []
    assert config_changes(mixed, {"data": {"mixture": [a, {**b, "name": "bee"}, c]}}) == []  # a rename
    assert config_changes(mixed, {"data": {"mixture": [a, {**b, "format": "alpaca"}, c]}}) == [
        'data.mixture source b: format "chat" -> "alpaca"'
    ]
    # what an older ftl recorded without a key reads as not set
    assert config_changes({"training": {}}, {"training": {"seed": 1}}) == ["training.seed: (not set) -> 1"]


def test_the_config_a_checkpoint_was_written_with_is_rebuilt_from_its_manifest() -> None:
    written = _cfg(method={"type": "lora", "lora": {"r": 8}}, training={"learning_rate": 1e-3})
    manifest = {"config_hash": config_hash(written), "config": result_values(written)}
    now = _cfg(method={"type": "lora", "lora": {"r": 4}}, output={"dir": "/runs/moved"})
    rebuilt = config_written_with(now, manifest)
    assert (rebuilt.method.lora.r, rebuilt.training.learning_rate) == (8, 1e-3)
    assert rebuilt.output.dir == now.output.dir  # what the hash leaves out stays as the run has it now
    assert config_hash(rebuilt) == config_hash(written)
    assert config_written_with(now, {"config_hash": "older-ftl"}) is now  # no recorded values: as it is
    assert config_written_with(written, manifest) is written


def test_a_mapping_value_is_compared_and_rebuilt_whole() -> None:
    """class_weights is one value: the resume note said `"balanced" -> (not set); class_weights.1:
    (not set) -> 9.0` (trial 43a), and a recorded mapping was merged into the current one."""
    head = {"type": "sequence_classification", "labels": ["a", "b", "1"]}
    data = {"format": "classification"}
    written = _cfg(data=data, transfer={"head": {**head, "class_weights": {"1": 9.0}}})
    now = _cfg(data=data, transfer={"head": {**head, "class_weights": {"a": 2.0}}})
    balanced = _cfg(data=data, transfer={"head": {**head, "class_weights": "balanced"}})
    assert config_changes(result_values(balanced), result_values(written)) == [
        'transfer.head.class_weights: "balanced" -> [1.0, 1.0, 9.0]'
    ]
    rebuilt = config_written_with(now, {"config_hash": config_hash(written), "config": result_values(written)})
    assert rebuilt.transfer.head.class_weights == [1.0, 1.0, 9.0]  # the recorded weights, as the loss takes them
    # The same weights by name or as a list are no change (trial 44a).
    as_list = _cfg(data=data, transfer={"head": {**head, "class_weights": [1.0, 1.0, 9.0]}})
    assert config_hash(as_list) == config_hash(written)
    assert config_changes(result_values(as_list), result_values(written)) == []
    # Scaled weights are the same weights: the loss is their weighted mean (trial 45a: said as a change).
    scaled = _cfg(data=data, transfer={"head": {**head, "class_weights": [2.0, 2.0, 18.0]}})
    assert config_hash(scaled) == config_hash(written)
    other = _cfg(data=data, transfer={"head": {**head, "class_weights": [2.0, 2.0, 9.0]}})
    assert config_changes(result_values(written), result_values(other)) == [
        "transfer.head.class_weights: [1.0, 1.0, 9.0] -> [1.0, 1.0, 4.5]"
    ]


def test_deep_merged_lays_a_fragment_over_its_base_at_every_depth() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert deep_merged(base, {"a": {"c": {"d": 5}}, "e": {"f": 6}}) == {"a": {"b": 1, "c": {"d": 5}}, "e": {"f": 6}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}  # unchanged


def test_a_resume_names_what_changed_or_that_an_earlier_ftl_recorded_only_a_hash() -> None:
    from trainer.checkpointing.resume import config_change_note

    then, now = _cfg(training={"learning_rate": 0.005}), _cfg(training={"learning_rate": 0.002})
    manifest = {"config_hash": config_hash(then), "config": result_values(then), "global_batch": 8}
    assert config_change_note(manifest, config_hash(now), now, 8) == "training.learning_rate: 0.005 -> 0.002"
    assert config_change_note(manifest, config_hash(then), then, 8) == ""
    # An earlier ftl's manifest (format 2): a hash only. Trial 35a: every resume across the upgrade
    # said "a different config" although nothing of the user's had changed.
    old = {"config_hash": "b9064f68c5680c95"}
    said = config_change_note(old, config_hash(now), now, 8)
    assert said.startswith(f"hash b9064f68c5680c95, now {config_hash(now)}; the checkpoint is an earlier ftl's")
    assert "so the change may not be yours" in said


def test_a_resume_naming_the_same_frozen_blocks_the_other_way_is_no_change() -> None:
    # Trial 42a: first_n_blocks 2 and train_last_n_blocks 2 of 4 blocks freeze the same blocks; the
    # workers record the model's block count in the manifest, so the resume is not warned as a change.
    from trainer.checkpointing.resume import config_change_note

    then = _cfg(transfer={"freeze": {"first_n_blocks": 2}})
    now = _cfg(transfer={"freeze": {"train_last_n_blocks": 2}})
    manifest = {"config_hash": config_hash(then), "config": result_values(then), "global_batch": 8, "num_blocks": 4}
    assert config_change_note(manifest, config_hash(now), now, 8) == ""
    # Another block count freezes other blocks: said.
    said = config_change_note({**manifest, "num_blocks": 6}, config_hash(now), now, 8)
    # Said in the keys each config set (trial 46a: the unset first_n_blocks was said as 0).
    assert "transfer.freeze first_n_blocks: 2 -> train_last_n_blocks: 2 (the first 2 -> 4 of 6 blocks frozen)" in said
    assert "-> 0" not in said and "null" not in said
    # A manifest without the count (an earlier ftl's): said as before.
    del manifest["num_blocks"]
    assert "transfer.freeze first_n_blocks: 2 -> train_last_n_blocks: 2" in config_change_note(
        manifest, config_hash(now), now, 8
    )
    # Same blocks, another rate: only the rate is said.
    other = _cfg(transfer={"freeze": {"train_last_n_blocks": 2}}, training={"learning_rate": 0.001})
    said = config_change_note({**manifest, "num_blocks": 4}, config_hash(other), other, 8)
    assert said.startswith("training.learning_rate:") and "freeze" not in said


def test_settings_the_run_never_reads_are_no_change() -> None:
    """Trial 46a: an SFT resume said training.preference.loss_type changed."""
    sft = _cfg(training={"preference": {"loss_type": "ipo"}})
    assert config_hash(sft) == config_hash(_cfg())
    dpo, pairs = {"objective": "dpo"}, {"format": "preference", "packing": False}
    ipo = _cfg(data=pairs, training={**dpo, "preference": {"loss_type": "ipo"}})
    assert config_hash(ipo) != config_hash(_cfg(data=pairs, training=dpo))
    # How the reference's log-probs are had is no change of the reference (trial 61c: the switch
    # ftl advises for a lost precomputed cache trained bit-identically, and was said as a change).
    hashes = {
        config_hash(_cfg(data=pairs, training={**dpo, "preference": {"reference": kind}}))
        for kind in ("auto", "precomputed", "adapters_disabled")
    }
    assert hashes == {config_hash(_cfg(data=pairs, training=dpo))}


def test_a_deepspeed_json_counts_by_its_content_not_its_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Trial 59c: a resume with the JSON moved was said as a change; one edited in place was not."""
    import json

    here, moved = tmp_path / "ds.json", tmp_path / "elsewhere.json"
    for path in (here, moved):
        path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 5e7}}))
    deepspeed = {"strategy": "deepspeed", "zero_stage": 2}
    before = _cfg(parallel={**deepspeed, "deepspeed_config": str(here)})
    recorded, hashed = result_values(before), config_hash(before)
    assert config_hash(_cfg(parallel={**deepspeed, "deepspeed_config": str(moved)})) == hashed
    here.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1e8}}))
    edited = _cfg(parallel={**deepspeed, "deepspeed_config": str(here)})
    assert config_hash(edited) != hashed
    assert config_changes(result_part(recorded), result_values(edited)) == [
        "parallel.deepspeed_json.zero_optimization.reduce_bucket_size: 50000000.0 -> 100000000.0"
    ]
    # The manifest's JSON is no setting: the config it was written with is rebuilt around it.
    manifest = {"config": recorded, "config_hash": hashed}
    now = _cfg(parallel={**deepspeed, "deepspeed_config": str(moved)}, training={"learning_rate": 5e-4})
    rebuilt = config_written_with(now, manifest)
    assert rebuilt.parallel.deepspeed_config == str(moved)
    assert rebuilt.training.learning_rate == before.training.learning_rate != 5e-4
