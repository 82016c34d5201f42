"""`mixlora serve` driven by the real `openai` client (and raw HTTP) on loopback, tiny model.

One server (4 adapters, the gate, a chat template, an API key) serves the module;
a second, gate-less one with its scheduler held tests the full queue.
"""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlparse

import openai
import pytest
from click.testing import CliRunner
from helpers_route_cli import _dirs, _gate
from helpers_serve import chat_prompt, running, wait_for, with_chat_template

import mlx_mixlora  # noqa: F401
from mlx_mixlora.cli import main
from mlx_mixlora.route import Decision, generate_routed
from mlx_mixlora.route.session import load_setup
from mlx_mixlora.serve.load import load_service

KEY = "test-key"
SENTIMENT = "Review: a warm and charming film .\nSentiment (positive or negative):"
NEWS = "News: The bank sold shares on monday.\nTopic (World, Sports, Business or Sci/Tech):"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir, ads = _dirs()
    gate = _gate()
    chat_dir = with_chat_template(model_dir, tmp_path_factory.mktemp("serve") / "tiny-chat")
    service = load_service(chat_dir, ads, gate, max_batch=4, context=256, api_key=KEY)
    with running(service) as url:
        yield url, service, chat_dir, ads, gate


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0], api_key=KEY, max_retries=0, timeout=60)


def raw(url: str, method: str, path: str, body: bytes | None, key: str | None = KEY):
    """(status, parsed JSON body) of one plain HTTP request."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, u.path + path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null")
    conn.close()
    return out


def generate_cli(model_dir, ads, gate, prompt: str, n: int) -> tuple[str, str]:
    """(adapter chosen by the gate, answer) from `mixlora generate --prompt`."""
    args = ["generate", "--model", str(model_dir), "--adapters", *ads, "--gate", str(gate)]
    r = CliRunner().invoke(main, [*args, "--prompt", prompt, "--max-tokens", str(n)])
    assert r.exit_code == 0, r.output
    first, _, text = r.output.partition("\n")
    return first.split()[1], text[:-1]  # click.echo added one newline


def test_models_lists_base_adapters_and_auto(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-chat", "ad0", "ad1", "ad2", "ad3", "auto"]


@pytest.mark.parametrize("prompt", [SENTIMENT, NEWS])
def test_greedy_answers_equal_mixlora_generate_and_auto_follows_the_gate(served, client, prompt):
    _, _, chat_dir, ads, gate = served
    adapter, expected = generate_cli(chat_dir, ads, gate, prompt, 12)
    assert expected.strip()
    named = client.completions.create(model=adapter, prompt=prompt, max_tokens=12, temperature=0)
    assert named.choices[0].text == expected
    assert named.model_extra["mixlora"] == {"adapter": adapter}
    auto = client.completions.create(model="auto", prompt=prompt, max_tokens=12, temperature=0)
    assert auto.choices[0].text == expected
    info = auto.model_extra["mixlora"]
    assert info["adapter"] == adapter
    weights = info["router_weights"]
    assert max(weights, key=weights.get) == adapter and abs(sum(weights.values()) - 1) < 1e-3
    assert auto.usage.completion_tokens == 12 and auto.choices[0].finish_reason == "length"


def test_chat_uses_the_template_and_equals_generate(served, client):
    _, _, chat_dir, ads, gate = served
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a warm film"}]
    adapter, expected = generate_cli(chat_dir, ads, gate, chat_prompt(msgs), 10)
    r = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    prompt_tokens = len(chat_prompt(msgs)) + 1  # one token per character, plus BOS
    assert r.usage.prompt_tokens == prompt_tokens


def test_base_model_name_uses_no_adapter(served, client):
    _, _, chat_dir, ads, _ = served
    setup = load_setup(chat_dir, ads)
    no_adapter = Decision([], [], [0.25] * 4)
    expected = generate_routed(
        setup.model, setup.tokenizer, setup.adapters, None, NEWS, max_tokens=12, decision=no_adapter
    ).text
    base = client.completions.create(model="tiny-chat", prompt=NEWS, max_tokens=12, temperature=0)
    assert base.choices[0].text == expected
    assert base.model_extra["mixlora"] == {"adapter": "base"}


@pytest.mark.parametrize("stop", [None, ["zz"], None])
def test_streaming_yields_the_same_text(client, stop):
    kw = dict(model="ad1", max_tokens=16, temperature=0, stop=stop)
    whole = client.completions.create(prompt=SENTIMENT, **kw)
    chunks = list(client.completions.create(prompt=SENTIMENT, stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.model_extra["mixlora"]["adapter"] == "ad1" for c in chunks)
    msgs = [{"role": "user", "content": "hello"}]
    kw = dict(model="auto", messages=msgs, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].model_extra["mixlora"] == whole.model_extra["mixlora"]


def test_stop_strings_cut_the_answer(client):
    kw = dict(model="ad0", prompt=NEWS, max_tokens=16, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:7]
    assert stop.strip() and full.find(stop) >= 0
    cut = client.completions.create(stop=[stop], **kw)
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(stop=[stop], stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.find(stop)]


def test_seed_makes_sampling_reproducible(client):
    kw = dict(model="ad2", prompt=SENTIMENT, max_tokens=12, temperature=1.0, top_p=0.9)
    a = [client.completions.create(seed=s, **kw).choices[0].text for s in (1, 1, 2, 3, 4)]
    assert a[0] == a[1]
    assert len(set(a[1:])) > 1


def test_concurrent_mixed_adapter_requests_batch_and_match_solo_answers(served, client):
    _, service, *_ = served
    jobs = [
        (f"ad{i % 4}" if i % 5 else "tiny-chat", p, 4 + 3 * i)
        for i, p in enumerate([SENTIMENT, NEWS] * 5)
    ]
    solo = [
        client.completions.create(model=m, prompt=p, max_tokens=n, temperature=0).choices[0].text
        for m, p, n in jobs
    ]
    before = service.engine.stats()
    out: list = [None] * len(jobs)

    def call(i: int) -> None:
        m, p, n = jobs[i]
        out[i] = client.completions.create(model=m, prompt=p, max_tokens=n, temperature=0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [o.choices[0].text for o in out] == solo
    after = service.engine.stats()
    assert after["peak_rows"] == 4  # max_batch: rows of different adapters shared steps
    # continuous batching: fewer decode steps than one request after another would take
    assert after["decode_steps"] - before["decode_steps"] < sum(n for *_, n in jobs) - len(jobs)

    # a finished row leaves the batch at the engine's next step, just after its answer is sent
    def idle() -> bool:
        st = service.engine.stats()
        return st["active_rows"] == 0 and st["queued"] == 0

    assert wait_for(idle, timeout=10)


def test_client_disconnect_frees_its_row(served):
    url, service, *_ = served
    before = service.engine.stats()["cancelled"]
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = {"model": "ad3", "prompt": NEWS, "max_tokens": 200, "temperature": 0, "stream": True}
    conn.request(
        "POST",
        u.path + "/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: service.engine.stats()["active_rows"] == 0, timeout=10)
    assert service.engine.stats()["cancelled"] == before + 1
    status, body = raw(
        url,
        "POST",
        "/completions",
        json.dumps({"model": "ad3", "prompt": NEWS, "max_tokens": 3}).encode(),
    )
    assert status == 200 and body["usage"]["completion_tokens"] <= 3


BAD_BODIES = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "nope", "prompt": "x"}).encode(), 400, "model"),
    (json.dumps({"prompt": "x"}).encode(), 400, "model"),
    (json.dumps({"model": "ad0", "prompt": 7}).encode(), 400, "prompt"),
    (json.dumps({"model": "ad0", "prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"model": "ad0", "prompt": "x", "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"model": "ad0", "prompt": "x", "top_p": 0}).encode(), 400, "top_p"),
    (json.dumps({"model": "ad0", "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "ad0", "prompt": "x", "max_tokens": "5"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "ad0", "prompt": "x", "n": 2}).encode(), 400, "n"),
    (json.dumps({"model": "ad0", "prompt": "x", "stop": ["a"] * 5}).encode(), 400, "stop"),
    (json.dumps({"model": "ad0", "prompt": "x", "seed": 1.5}).encode(), 400, "seed"),
    (json.dumps({"model": "ad0", "prompt": "x", "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"model": "ad0", "prompt": "x" * 300}).encode(), 413, "prompt"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES)
def test_bad_completion_requests_get_openai_errors(served, body, status, param):
    url = served[0]
    got, err = raw(url, "POST", "/completions", body)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param and err["error"]["code"] == status
    ok, _ = raw(
        url,
        "POST",
        "/completions",
        json.dumps({"model": "ad0", "prompt": "x", "max_tokens": 1}).encode(),
    )
    assert ok == 200  # the server keeps serving


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    ],
)
def test_bad_chat_requests_get_400(served, messages):
    got, err = raw(
        served[0],
        "POST",
        "/chat/completions",
        json.dumps({"model": "ad0", "messages": messages}).encode(),
    )
    assert got == 400 and err["error"]["param"] == "messages"


def test_errors_through_the_openai_client(served, client):
    with pytest.raises(openai.BadRequestError, match="unknown model 'ad9'"):
        client.completions.create(model="ad9", prompt="x")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(
            model="ad0", messages=[{"role": "user", "content": "y" * 400}]
        )
    assert e.value.status_code == 413
    bad = openai.OpenAI(base_url=served[0], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert raw(served[0], "GET", "/models", None, key=None)[0] == 401
    assert raw(served[0], "GET", "/nowhere", None)[0] == 404
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    r = client.chat.completions.create(model="ad0", messages=text_parts, max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_full_queue_gets_503_and_auto_needs_a_gate(tmp_path):
    model_dir, ads = _dirs()
    service = load_service(model_dir, ads[:2], None, max_batch=1, max_queue=1, context=128)
    with running(service, start_engine=False) as url:
        results: list = []
        body = json.dumps({"model": "ad0", "prompt": "hello", "max_tokens": 3}).encode()

        def call() -> None:
            results.append(raw(url, "POST", "/completions", body, key=None))

        waiting = [threading.Thread(target=call) for _ in range(2)]
        for t in waiting:
            t.start()
        assert wait_for(lambda: service.engine.stats()["queued"] == 2)
        status, err = raw(url, "POST", "/completions", body, key=None)
        assert status == 503 and "queue is full" in err["error"]["message"]
        status, err = raw(
            url,
            "POST",
            "/completions",
            json.dumps({"model": "auto", "prompt": "x"}).encode(),
            key=None,
        )
        assert status == 400 and "--gate" in err["error"]["message"]
        service.engine.start()
        for t in waiting:
            t.join(30)
        assert [s for s, _ in results] == [200, 200]
        assert [m["id"] for m in raw(url, "GET", "/models", None, key=None)[1]["data"]] == [
            "model",
            "ad0",
            "ad1",
        ]
