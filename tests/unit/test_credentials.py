"""Where credentials come from, and one line a person can act on when they are unusable. (Refused
credentials, a missing namespace and forbidden calls are shown on the real API server: tests/e2e.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufabric import credentials
from gpufabric.cli import main


def kubeconfig(path: Path, *, server: str = "https://127.0.0.1:6443", contexts: tuple[str, ...] = ("one",)) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "secret-token"}}],
                "contexts": [{"name": name, "context": {"cluster": "c", "user": "u"}} for name in contexts],
                "current-context": contexts[0],
            }
        )
    )
    return path


def test_the_flag_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "env", server="https://env:6443")))
    configuration = credentials.load(str(kubeconfig(tmp_path / "flag", server="https://flag:6443")))
    assert configuration.host == "https://flag:6443"
    assert credentials.bearer_token(configuration) == ("Bearer", "secret-token")


def test_kubeconfig_from_the_environment_with_a_chosen_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "env", contexts=("one", "two"))))
    assert credentials.load(context="two").host == "https://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            None,
            "no credentials: not running in a pod, and no kubeconfig at {path} (pass --kubeconfig or set KUBECONFIG)",
        ),
        ("root:x:0:0:root:/root:/bin/bash\n", "kubeconfig {path} is not a kubeconfig"),
        ("[unclosed", "kubeconfig {path} cannot be read"),
        ("{}", "kubeconfig {path}: "),
    ],
    ids=["missing", "not-a-kubeconfig", "not-yaml", "empty"],
)
def test_unusable_credentials_are_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "config"
    if content is not None:
        path.write_text(content)
    with pytest.raises(credentials.CredentialsError) as caught:
        credentials.load(str(path))
    message = str(caught.value)
    assert message.startswith(expected.format(path=path))
    assert "\n" not in message


def test_an_unknown_context_is_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", contexts=("one", "two"))
    with pytest.raises(credentials.CredentialsError) as caught:
        credentials.load(str(path), context="nope")
    assert str(caught.value) == f"context nope is not in kubeconfig {path} (its contexts: one, two)"


def test_the_operator_without_credentials_exits_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["operator", "--kubeconfig", str(tmp_path / "missing")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("gpufabric operator: no credentials:")


def test_the_operator_against_nothing_listening_exits_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "config", server="https://127.0.0.1:9")  # discard: nothing answers
    assert main(["operator", "--kubeconfig", str(config)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("gpufabric operator: cannot reach the API server at https://127.0.0.1:9:")
