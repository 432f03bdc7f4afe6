"""The lm-evaluation-harness model "dllm_accel" (dllm_accel/lm_eval.py) on the bundled tiny
LLaDA."""

import pytest

pytest.importorskip("lm_eval")

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import MODEL_REGISTRY, get_model  # noqa: E402

import dllm_accel  # noqa: E402

# noqa: E402
from dllm_accel import (
    ElasticCache,
    Factor,
    FullLength,
    LowConfidence,
    Sampler,
    StopAtEOS,
    Threshold,
)
from dllm_accel.lm_eval import DllmAccelLM, cut_at_first  # noqa: E402
from dllm_accel.policies import DualCache, NoCache  # noqa: E402
from dllm_accel.tasks import arith  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEN, BLOCK = 48, 24  # what the tiny models were trained to answer in
PROBLEMS = arith.problems(6, seed=0)
TINY = f"pretrained=tiny-llada,max_new_tokens={GEN},block_length={BLOCK},device=cpu"


def requests(lm, gen_kwargs) -> list[Instance]:
    contexts = [lm.apply_chat_template(arith.messages(p)) for p in PROBLEMS]
    return [
        Instance("generate_until", {}, (c, dict(gen_kwargs)), i) for i, c in enumerate(contexts)
    ]


def direct(sampler, max_new_tokens=GEN, max_tokens=GEN) -> list[str]:
    """The problems decoded in one batch with Sampler; texts of up to `max_tokens` tokens, up to the
    first EOS / end-of-turn."""
    tokenizer = dllm_accel.load_tokenizer("tiny-llada")
    batch = dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in PROBLEMS])
    out = sampler.generate(
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        block_length=BLOCK,
    )
    width = batch["input_ids"].shape[1]
    return [
        tokenizer.decode(row[width : width + min(int(n), max_tokens)], skip_special_tokens=True)
        for row, n in zip(out.sequences, out.generated_tokens, strict=True)
    ]


@pytest.fixture(scope="module")
def lm():
    return DllmAccelLM.create_from_arg_string(
        f"{TINY},unmask=threshold,cache=elastic_cache", {"batch_size": "4"}
    )


def test_importing_dllm_accel_imports_no_lm_eval():
    code = "import sys, dllm_accel; print(sorted(m for m in sys.modules if 'lm_eval' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_registered_as_dllm_accel_next_to_lm_eval_models():
    assert get_model("dllm_accel") is DllmAccelLM
    assert "hf" in MODEL_REGISTRY and "vllm" in MODEL_REGISTRY


@pytest.mark.parametrize(
    "args, policies",
    [
        (
            "unmask=low_confidence,stop=full_length",
            dict(unmask=LowConfidence(GEN), cache=NoCache(), stop=FullLength()),
        ),
        (
            "unmask=threshold,tau=0.8,cache=elastic_cache,gamma=0.7,window=8",
            dict(unmask=Threshold(0.8), cache=ElasticCache(gamma=0.7, window=8), stop=StopAtEOS()),
        ),
        (
            "unmask=factor,f=2,cache=dual_cache",
            dict(unmask=Factor(2), cache=DualCache(), stop=StopAtEOS()),
        ),
    ],
)
def test_generate_until_returns_what_sampler_decodes(args, policies):
    # batches of 4 and 2, reordered
    lm = DllmAccelLM.create_from_arg_string(f"{TINY},batch_size=4,{args}")
    texts = lm.generate_until(requests(lm, {"until": [], "do_sample": False}))
    assert texts == direct(Sampler(lm.model, **policies))
    assert sum(arith.is_correct(t, p) for t, p in zip(texts, PROBLEMS, strict=True)) >= 5


def test_model_args_reach_every_policy_option_and_the_guide():
    lm = DllmAccelLM.create_from_arg_string(
        f"{TINY},unmask=threshold,tau=0.8,cache=elastic_cache,gamma=0.7,track=2,cache_distant_masks=false,"
        "guide=ar,ar_model=tiny-ar,acceptance=exact,stop=stop_at_eos,fill=mask"
    )
    method = lm.method(GEN)
    assert (method.cache.track, method.cache.cache_distant_masks, method.stop.fill) == (
        2,
        False,
        "mask",
    )
    assert (method.guide.acceptance, method.block_length) == ("exact", BLOCK)
    assert method.name == (
        "ElasticCache(gamma=0.7, track=2, cache_distant_masks=False) + Threshold(tau=0.8) + "
        f"StopAtEOS(fill='mask') + ARGuide(tiny-ar, acceptance='exact'), blocks of {BLOCK}"
    )
    texts = lm.generate_until(requests(lm, {"until": []}))
    assert texts == direct(method.sampler(lm.model)) and lm.measured.ar_forwards > 0
    assert lm.get_model_info()["method"] == method.name


def test_until_cuts_at_the_earliest_stop_string(lm):
    full = lm.generate_until(requests(lm, {}))
    assert all("=" in text and "####" in text for text in full)
    assert lm.generate_until(requests(lm, {"until": ["####", "="]})) == [
        t[: t.index("=")] for t in full
    ]
    assert lm.generate_until(requests(lm, {"until": "####"})) == [
        t[: t.index("####")] for t in full
    ]
    assert cut_at_first("a=1. #### 1", ["", "#", "1"]) == "a="


def test_max_gen_toks_rounds_up_to_blocks_and_cuts_the_tokens(lm):
    # decoded in one block of 24, cut to 5 tokens
    texts = lm.generate_until(requests(lm, {"max_gen_toks": 5}))
    sampler = Sampler(lm.model, unmask=Threshold(0.9), cache=ElasticCache(), stop=StopAtEOS())
    assert texts == direct(sampler, max_new_tokens=BLOCK, max_tokens=5)
    assert all(
        0 < len(short) < len(full) for short, full in zip(texts, direct(sampler), strict=True)
    )


def test_sampled_texts_depend_on_neither_batch_size_nor_the_order_of_requests():
    """At temperature > 0 each request draws from a generator seeded by (seed, its id: task,
    document, index, repeat)."""
    plain = requests(DllmAccelLM.create_from_arg_string(TINY), {})
    contexts = [request.args[0] for request in plain]
    instances = [
        Instance("generate_until", {}, (c, {}), 0, metadata=("arith", i, 1))
        for i, c in enumerate(contexts)
    ]
    sampled = f"{TINY},unmask=threshold,temperature=3.0,cache=elastic_cache"

    def texts(options, chosen):
        return DllmAccelLM.create_from_arg_string(f"{sampled},{options}").generate_until(chosen)

    one = texts("batch_size=1,seed=1", instances)
    assert texts("batch_size=4,seed=1", instances[::-1]) == one[::-1]
    assert texts("batch_size=4,seed=1", instances[2:5]) == one[2:5]
    assert texts("batch_size=4,seed=2", instances) != one, "the case needs sampling that matters"
    assert dllm_accel.lm_eval._request_ids([instances[0], instances[0], instances[1]]) == [
        "arith/0/0#0",
        "arith/0/0#1",
        "arith/1/0#0",
    ]
    assert dllm_accel.lm_eval._request_ids(plain[:1]) == [f"context:{contexts[0]}#0"]


@pytest.mark.parametrize(
    "args, named",
    [
        ("unmask=fast", ["unmask='fast'", "low_confidence", "threshold", "dream"]),
        (
            "cache=elastik",
            ["cache='elastik'", "no_cache", "prefix_cache", "dual_cache", "elastic_cache"],
        ),
        ("stop=eos", ["stop='eos'", "full_length", "stop_at_eos"]),
        ("unmask=low_confidence,tau=0.9", ["tau=0.9", "unmask=low_confidence", "steps"]),
        ("cache=dual_cache,gamma=0.9", ["gamma=0.9", "cache=dual_cache"]),
        ("guide=ar", ["ar_model", "guide=ar"]),
        ("ar_model=tiny-ar", ["ar_model", "guide=ar"]),
        ("guide=ar,ar_model=tiny-ar,acceptance=sure", ["acceptance", "exact"]),
        ("unmask=threshold,tau=2", ["tau", "(0, 1]"]),
        ("cache=elastic_cache,window=0", ["window"]),
        ("batch_size=auto", ["batch_size", "'auto'"]),
        ("block_length=-8", ["block_length"]),
    ],
)
def test_bad_model_args_are_named(args, named):
    with pytest.raises(ValueError) as error:
        DllmAccelLM.create_from_arg_string(f"{TINY},{args}")
    assert all(part in str(error.value) for part in named), str(error.value)


def test_loglikelihood_tasks_are_refused_clearly(lm):
    for method in (lm.loglikelihood, lm.loglikelihood_rolling):
        with pytest.raises(NotImplementedError, match="generation tasks only"):
            method([])


def test_lm_eval_cli_runs_a_task_through_python_m(tmp_path, lm):
    """`python -m dllm_accel.lm_eval` = lm_eval's CLI with the model registered; a local task, no
    download."""
    data = tmp_path / "arith.jsonl"
    data.write_text(
        "".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in PROBLEMS)
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arith_tiny.yaml").write_text(f"""\
task: dllm_accel_arith_tiny
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {tmp_path / "datasets"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["<|eot|>"], max_gen_toks: {GEN}, do_sample: false}}
filter_list:
  - name: answer
    filter: [{{function: regex, regex_pattern: "#### (\\\\d+)"}}, {{function: take_first}}]
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
""")
    command = [
        sys.executable,
        "-m",
        "dllm_accel.lm_eval",
        "--model",
        "dllm_accel",
        "--model_args",
        f"{TINY},unmask=threshold,cache=elastic_cache",
        "--tasks",
        "dllm_accel_arith_tiny",
        "--include_path",
        str(tmp_path / "tasks"),
        "--apply_chat_template",
        "--batch_size",
        "4",
        "--log_samples",
        "--output_path",
        str(tmp_path / "out"),
    ]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    results = json.loads(
        Path(glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))[0]).read_text()
    )
    assert results["results"]["dllm_accel_arith_tiny"]["exact_match,answer"] >= 5 / 6
    assert results["config"]["cache"].startswith("ElasticCache(") and results["config"]["nfe"] > 0
    assert (
        results["config"]["method"] == "ElasticCache + Threshold(tau=0.9) + StopAtEOS, blocks of 24"
    )
    samples = [
        json.loads(line)
        for line in open(glob.glob(str(tmp_path / "out" / "*" / "samples_*.jsonl"))[0])
    ]
    by_question = {s["doc"]["question"]: s["resps"][0][0] for s in samples}
    assert [by_question[p.question] for p in PROBLEMS] == lm.generate_until(requests(lm, {}))
