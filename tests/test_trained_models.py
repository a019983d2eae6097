"""A trained run directory as a model: loading (latest or a chosen step), eval and serve through the CLI,
export to a plain Hugging Face folder with merged LoRA and the run's chat template, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import load_config
from agentrft.errors import ConfigError, ModelNotFoundError
from agentrft.jobs.checkpoint import CheckpointError
from agentrft.jobs.store import RunStore
from agentrft.jobs.trained import EXPORT_INFO, load_any_model, split_model_spec
from agentrft.models.chat_format import HERMES_CHAT_TEMPLATE, HermesChatFormat, TemplateChatFormat
from agentrft.models.loading import load_model

PROMPT = [1, 504, 2226, 314, 260, 3365, 30, 2, 198, 28, 9]


def run_config(model_dir: Path, out_dir: Path, lora: bool, steps: int) -> dict:
    return {"method": "rft", "model": str(model_dir), "out_dir": str(out_dir), "data": {"env": "toy"},
            "lora": {"enabled": lora, "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]},
            "training": {"max_steps": steps, "batch_size": 2, "eval_interval": 1, "eval_samples": 2,
                         "checkpoint_interval": 1, "keep_best_k": 2},
            "rft": {"group_size": 2}, "optim": {"learning_rate": 0.05, "micro_batch_size": 8},
            "rollout": {"max_turns": 1, "max_new_tokens": 6, "temperature": 1.0}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base model folder, a 2-step LoRA run and a 1-step full fine-tuning run, with their trained models."""
    from agentrft.models.loading import save_tiny_model
    from agentrft.train.runner import run_job

    root = tmp_path_factory.mktemp("trained")
    base = save_tiny_model(root / "model")
    out = {"base": base}
    for name, lora, steps in (("lora", True, 2), ("full", False, 1)):
        result = run_job(load_config(run_config(base, root / name, lora, steps)), log=lambda s: None)
        out[name], out[f"{name}_model"] = result.run_dir, result.policy.model
    return out


def logits(model, ids=PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_a_lora_run_loads_as_the_trained_policy(runs):
    loaded = load_any_model(str(runs["lora"]))
    assert loaded.step == 2 and loaded.run_dir == runs["lora"] and loaded.chat_format == "auto"
    assert "step 2" in loaded.description and "LoRA" in loaded.description
    assert torch.allclose(logits(loaded.model), logits(runs["lora_model"]), atol=1e-5)
    base, _ = load_model(runs["base"])
    assert not torch.allclose(logits(loaded.model), logits(base), atol=1e-3)  # the adapter was restored


def test_step_suffix_loads_an_earlier_checkpoint(runs):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    assert split_model_spec(f"{runs['lora']}@step=1") == (str(runs["lora"]), 1)
    first = load_any_model(f"{runs['lora']}@step=1")
    assert first.step == 1
    saved = load_file(str(runs["lora"] / "checkpoints" / "step-000001" / "adapter" / "adapter_model.safetensors"))
    state = get_peft_model_state_dict(first.model)
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert not torch.allclose(logits(first.model), logits(runs["lora_model"]), atol=1e-4)


def test_a_full_finetuning_run_loads_its_weights(runs):
    loaded = load_any_model(runs["full"])
    assert loaded.step == 1 and "full fine-tune" in loaded.description
    assert torch.allclose(logits(loaded.model), logits(runs["full_model"]), atol=1e-5)
    base, _ = load_model(runs["base"])
    assert not torch.allclose(logits(loaded.model), logits(base), atol=1e-3)


def test_unusable_folders_get_clear_errors(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_any_model(empty)
    with pytest.raises(ModelNotFoundError, match="neither a bundled model nor an existing folder"):
        load_any_model(tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="run directory"):  # the models layer points to the run loader
        load_model(runs["lora"])
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 9 .*steps 1, 2"):
        load_any_model(f"{runs['lora']}@step=9")
    with pytest.raises(ConfigError, match="not one"):
        load_any_model(f"{runs['base']}@step=1")
    fresh = tmp_path / "fresh-run"  # a run that started but never checkpointed
    with RunStore(fresh) as store:
        store.create_run("fresh", "rft", load_config(run_config(runs["base"], fresh, True, 1)).model_dump(mode="json"),
                         {}, 0.0)
    with pytest.raises(ConfigError, match="no checkpoint yet"):
        load_any_model(fresh)
    res = CliRunner().invoke(main, ["eval", "--model", str(empty), "--env", "toy", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "no config.json" in res.output


def test_eval_cli_evaluates_the_trained_model(runs, tmp_path):
    from agentrft.models.chat_format import get_chat_format
    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.rollout.sampler import SamplingParams

    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["eval", "--model", str(runs["lora"]), "--env", "toy", "--limit", "2",
                                    "--temperature", "0", "--max-new-tokens", "5", "--max-turns", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rollouts"] == 2 and summary["model"] == str(runs["lora"])
    traj = json.loads((out / "trajectories.jsonl").read_text().splitlines()[0])
    prompt = [t for t, k in zip(traj["token_ids"], traj["token_kinds"]) if k == "prompt"]
    sampled = [t for t, k in zip(traj["token_ids"], traj["token_kinds"]) if k == "sampled"]
    loaded = load_any_model(runs["lora"])
    cf = get_chat_format(loaded.tokenizer, loaded.chat_format)
    (ref,) = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id).generate(
        [prompt], SamplingParams(temperature=0, max_new_tokens=5, stop_token_ids=cf.stop_token_ids))
    assert sampled == ref.token_ids  # greedy: the trained model's own tokens


def test_export_writes_a_plain_hf_folder_with_the_runs_logits_and_template(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "export"
    res = CliRunner().invoke(main, ["export", str(runs["lora"]), "--out", str(folder)])
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "tokenizer.json", EXPORT_INFO} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("adapter_*"))
    # no agentrft code: transformers alone
    merged = AutoModelForCausalLM.from_pretrained(str(folder))
    assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in merged.named_parameters())
    run_model = load_any_model(runs["lora"]).model
    assert torch.allclose(logits(merged), logits(run_model), atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template == HERMES_CHAT_TEMPLATE
    # ... and back through --model FOLDER, in the run's chat format
    back = load_any_model(folder)
    assert back.chat_format == "hermes" and "export" in back.description
    assert torch.allclose(logits(back.model), logits(run_model), atol=1e-5)
    info = json.loads((folder / EXPORT_INFO).read_text())
    assert info["step"] == 2 and info["run_dir"] == str(runs["lora"])

    res = CliRunner().invoke(main, ["export", str(runs["lora"]), "--out", str(folder)])
    assert res.exit_code == 2 and "not an empty folder" in res.output
    res = CliRunner().invoke(main, ["export", str(runs["base"]), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "needs a run directory" in res.output


CONVERSATIONS = [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris and Oslo?"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
          {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Øslo"}}}]},
      {"role": "tool", "tool_call_id": "a", "content": "sunny"},
      {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "snow"}]},
      {"role": "assistant", "content": "Sunny and snowy."}, {"role": "user", "content": "Thanks"}], True),
    ([{"role": "developer", "content": "Dev note."}, {"role": "user", "content": "Hi"}], False),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c", "content": "42"}], True),
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather — now",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"name": "lookup", "parameters": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize("messages,with_tools", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_exported_hermes_template_renders_what_the_run_trained_on(tokenizer, messages, with_tools, generation_prompt):
    tools = TOOLS if with_tools else None
    ours = HermesChatFormat(tokenizer).render_text(messages, tools, generation_prompt)
    theirs = tokenizer.apply_chat_template(messages, tools=tools, chat_template=HERMES_CHAT_TEMPLATE,
                                           add_generation_prompt=generation_prompt, tokenize=False)
    assert theirs == ours


@pytest.mark.parametrize("messages,with_tools", CONVERSATIONS)
def test_the_exported_template_read_as_a_template_format_gives_the_hermes_tokens(tokenizer, messages, with_tools):
    """An export loaded without agentrft_export.json (``chat_format: auto`` -> the template, which has tools)
    still prompts the model with the tokens it trained on."""
    tools = TOOLS if with_tools else None
    hermes, template = HermesChatFormat(tokenizer), TemplateChatFormat(tokenizer, HERMES_CHAT_TEMPLATE)
    assert template.supports_tools and template.stop_token_ids == hermes.stop_token_ids
    assert template.prompt_tokens(messages, tools) == hermes.prompt_tokens(messages, tools)
    for m in messages:
        if m["role"] == "assistant":
            assert template.assistant_tokens(m) == hermes.assistant_tokens(m)
    result = [{"role": "tool", "tool_call_id": "a", "content": "42"}]
    assert template.followup_tokens(result) == hermes.followup_tokens(result)


def test_serve_cli_serves_a_run_directory(runs, monkeypatch, openai_server):
    import uvicorn

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    res = CliRunner().invoke(main, ["serve", "--model", f"{runs['lora']}@step=2", "--served-name", "agent",
                                    "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert captured["port"] == 8123 and captured["host"] == "127.0.0.1" and "step 2" in res.output
    loaded = load_any_model(runs["lora"])
    cf = HermesChatFormat(loaded.tokenizer)
    messages = [{"role": "user", "content": "Say something about lamps."}]
    with openai_server(captured["app"]) as client:
        r = client.chat.completions.create(model="agent", messages=messages, temperature=0, max_tokens=6)
    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.rollout.sampler import SamplingParams

    (ref,) = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id).generate(
        [cf.prompt_tokens(messages)], SamplingParams(temperature=0, max_new_tokens=6, stop_token_ids=cf.stop_token_ids))
    body = ref.token_ids[:-1] if ref.finish_reason == "stop" else ref.token_ids
    assert r.choices[0].message.content == cf.decode(body)
