"""The token page (`python -m rto.tokens`) of a tiny run, checked in a real headless Chromium, and
the critic PPO leaves beside the actor."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rto.artifacts import verify_manifest
from rto.models import ScalarHeadModel
from rto.models.critic import load_critic
from rto.tasks.embedded import build_tokenizer, gold_parts, gold_token_rewards
from tests.browser import chromium
from tests.wandb_records import logged

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 4


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    """A tiny run as a user makes it (Hydra writes .hydra/ there), then its token page."""
    out = tmp_path_factory.mktemp("tokens_run")
    done = run_cli("-m", "rto.main", "debug=tiny", "logger=default", f"hydra.run.dir={out}",
                   f"paths.cache_dir={out / 'cache'}")
    assert done.returncode == 0, done.stderr[-3000:]
    page = run_cli("-m", "rto.tokens", str(out), "--n-prompts", str(N_PROMPTS))
    assert page.returncode == 0, page.stderr[-3000:]
    return out


def test_critic_is_saved_beside_the_actor(page_run):
    folder = page_run / "checkpoints" / "critic"
    assert verify_manifest(folder, "critic")["kind"] == "critic"
    critic, moments = load_critic(folder)
    rm = ScalarHeadModel.from_pretrained(page_run / "checkpoints" / "rm")
    # the critic starts as a copy of the reward model: the saved one is the trained one
    assert any(not torch.equal(a, b) for a, b in zip(critic.state_dict().values(), rm.state_dict().values()))
    assert moments.count == 2 * 8  # debug=tiny: 2 PPO iterations of 8 scores feed the reward statistics
    assert (folder / "tokenizer.json").is_file()


def test_page_data_is_what_the_reward_hands_out(page_run):
    data = json.loads((page_run / "tokens.json").read_text())
    tok = build_tokenizer()
    assert len(data["prompts"]) == N_PROMPTS
    assert [p["key"] for p in data["policies"]] == ["sft", "dpo", "policy"]
    for prompt in data["prompts"]:
        for view in prompt["responses"]:
            ids, s = view["ids"], view["signals"]
            text = tok.decode(ids)
            assert tok(text, add_special_tokens=False)["input_ids"] == ids
            assert "".join(view["tokens"]) == text
            assert {len(v) for v in s.values()} == {len(ids)}
            assert s["gold"] == gold_token_rewards(prompt["prompt"], text)
            parts = gold_parts(prompt["prompt"], text)
            assert view["scores"]["gold_sequence"] == pytest.approx(parts.sequence)
            assert view["scores"]["gold"] == pytest.approx(parts.total)
            # reward=token: DPO reward (dpo_scale = 0.05, no clip) + KL term, plus the RM score at the end
            expected = [d + k for d, k in zip(s["dpo"], s["kl"])]
            expected[-1] += view["scores"]["rm_used"]
            assert s["reward"] == pytest.approx(expected, abs=1e-4)
            assert s["dpo"] == pytest.approx([0.05 * r for r in s["log_ratio"]], abs=1e-4)
        sft = prompt["responses"][0]
        assert sft["signals"]["kl"] == pytest.approx([0.0] * len(sft["ids"]), abs=1e-5)  # pi = pi_ref


def test_page_shows_the_evaluations_responses(page_run):
    """The page's prompts are the first of the evaluation's set (test) and each policy's responses are
    the ones the evaluation drew from that policy's stream (its samples.jsonl)."""
    data = json.loads((page_run / "tokens.json").read_text())
    saved = [json.loads(line) for line in (page_run / "samples.jsonl").read_text().splitlines()]
    tok = build_tokenizer()
    shown = [(view["policy"], prompt["prompt"], tok.decode(view["ids"]))
             for prompt in data["prompts"] for view in prompt["responses"]]
    evaluated = {(row["policy"], row["prompt"]): row["response"] for row in saved}
    assert len(shown) == 3 * N_PROMPTS
    for policy, prompt, response in shown:
        assert evaluated[(policy, prompt)] == response, (policy, prompt)


def test_page_renders_and_switches_signal_in_chromium(page_run, tmp_path):
    """The browser test (Debian's Chromium through selenium; skipped without it)."""
    html = (page_run / "tokens.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load anything"
    data = json.loads((page_run / "tokens.json").read_text())
    with chromium(tmp_path / "profile") as browser:
        browser.get((page_run / "tokens.html").as_uri())
        browser.implicitly_wait(10)
        browser.find_element("css selector", "body[data-ready='1']")
        rows = browser.execute_script("""return Array.from(document.querySelectorAll('.response')).map(r => ({
            n: +r.dataset.nTokens, spans: Array.from(r.querySelectorAll('.tok')).map(t => t.textContent)}))""")
        views = [v for p in data["prompts"] for v in p["responses"]]
        assert len(rows) == len(views) == 3 * N_PROMPTS
        tok = build_tokenizer()
        for row, view in zip(rows, views):
            n_tokens = len(tok(tok.decode(view["ids"]), add_special_tokens=False)["input_ids"])
            assert len(row["spans"]) == row["n"] == n_tokens
            assert " ".join(row["spans"]) == tok.decode(view["ids"])

        colours = "return Array.from(document.querySelectorAll('.tok')).map(t => getComputedStyle(t).backgroundColor)"
        legend = "return document.getElementById('legend-text').textContent"
        before, legend_before = browser.execute_script(colours), browser.execute_script(legend)
        browser.find_element("xpath", "//input[@id='signal-gold']/..").click()
        after = browser.execute_script(colours)
        assert browser.execute_script("return document.body.dataset.signal") == "gold"
        assert browser.execute_script(legend) != legend_before
        assert sum(a != b for a, b in zip(before, after)) > len(after) // 4
        # the colours encode the values: red below 0, blue above, white at 0
        gold = [g for v in views for g in v["signals"]["gold"]]
        for value, colour in zip(gold, after):
            r, _, b = map(int, re.findall(r"\d+", colour)[:3])
            assert (r > b) if value < 0 else (b > r) if value > 0 else (r == b), (value, colour)

        from selenium.webdriver import ActionChains
        first = browser.find_elements("css selector", ".tok")[0]
        ActionChains(browser).move_to_element(first).perform()
        tip = browser.find_element("id", "tip")
        assert tip.is_displayed() and f"{gold[0]:.3f}" in tip.text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_page_goes_to_the_runs_wandb_run(page_run):
    html = (page_run / "tokens.html").read_text()
    runs = sorted((page_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0].name.split("-")[-1] == runs[1].name.split("-")[-1]  # the same run, resumed
    panels = list(runs[1].glob("files/media/html/tokens/page_*.html"))
    assert len(panels) == 1 and panels[0].read_text() == html
    assert "tokens/page/_type" in logged(next(runs[1].glob("run-*.wandb")))["history"]  # a media panel


def test_report_links_the_page(page_run, tmp_path):
    from rto.report import write_report
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "0").symlink_to(page_run, target_is_directory=True)
    report = (write_report(sweep) / "report.md").read_text()
    assert "(../0/tokens.html)" in report


def test_not_a_run_folder_is_a_short_error(tmp_path):
    done = run_cli("-m", "rto.tokens", str(tmp_path))
    assert done.returncode == 1
    assert "is not a run folder" in done.stderr and "Traceback" not in done.stderr


def test_evaluation_logs_credit_assignment_and_the_command_reproduces_it(page_run):
    metrics = json.loads((page_run / "metrics.json").read_text())
    for key in ("spearman", "pearson"):
        assert -1.0 <= metrics[f"eval/credit/{key}"] <= 1.0
    assert metrics["eval/credit/tokens"] > 0
    # `python -m rto.credit` samples the same SFT responses (same prompts, seed and batch): same numbers
    done = run_cli("-m", "rto.credit", str(page_run))
    assert done.returncode == 0, done.stderr[-2000:]
    for key, value in json.loads(done.stdout).items():
        assert value == pytest.approx(metrics[f"eval/{key}"], abs=1e-9), key
