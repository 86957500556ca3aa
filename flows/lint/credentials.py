"""``hardcoded-secret``: error. A credential written into the notebook, where everyone who can
read the file (and its git history, and every run's executed copy) can use it:

- a string with the shape of a well-known key (AWS access key id, private key block, GitHub,
  Slack, Google API, OpenAI, Hugging Face, Stripe tokens), in code or in a cell's saved output;
- a password in a connection URL (``postgresql://user:secret@host/db``);
- a string literal assigned or passed to a credential-named variable or argument
  (``api_key``, ``*_token``, ``password``, ``client_secret``...), unless it is a placeholder
  (``""``, ``"<your key>"``, ``"changeme"``...) or a file name.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from flows.lint.cells import Notebook
from flows.lint.context import CodeContext
from flows.lint.findings import Finding

_KNOWN_SHAPES = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{22,})\b"),
    "a Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "an OpenAI key": re.compile(r"\bsk-(?:proj-)?(?=[\w-]*\d)(?=[\w-]*[A-Z])[\w-]{20,}"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "a Stripe key": re.compile(r"\b[rs]k_live_[A-Za-z0-9]{16,}\b"),
}
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@", re.IGNORECASE)
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|pwd|passphrase|secret|token|apikey|api_key|access_key"
    r"|secret_key|private_key|auth_key|account_key|client_secret|access_token|auth_token)$"
)
_NOT_SECRET_NAME = re.compile(r"(?:^|_)(?:pad|eos|bos|unk|mask|sep|cls|special|oov)_token$")
_PLACEHOLDER = re.compile(
    r"<|>|\{|\$|\*\*\*|\.\.\.|your|xxx|changeme|change_me|placeholder|example|dummy|redacted"
    r"|replace|insert|todo|secret_here|token_here",
    re.IGNORECASE,
)
_FILE_LIKE = re.compile(r"[/\\]|\.(?:json|pem|key|txt|env|yaml|yml|cfg|ini|p12)$", re.IGNORECASE)
_FIX = (
    "remove it from the notebook (and rotate it: the file's history has it); declare "
    "`{name} = None` in the parameters cell and let the pipeline pass it from the environment "
    "(spec `secrets: {{<notebook>: {{{name}: {{env: {env}}}}}}}`)"
)


def _shape(text: str) -> str | None:
    return next((what for what, pattern in _KNOWN_SHAPES.items() if pattern.search(text)), None)


def _looks_secret(value: str) -> bool:
    """A credential-like value: long enough, no spaces, mixed characters, not a placeholder."""
    if len(value) < 8 or re.search(r"\s", value) or _PLACEHOLDER.search(value):
        return False
    if _FILE_LIKE.search(value) or re.fullmatch(r"[A-Z0-9_]+", value):  # a file, an env name
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^\w]"))
    return classes >= 2 or len(value) >= 20


def _fix(name: str) -> str:
    name = name if name.isidentifier() else "api_token"
    return _FIX.format(name=name, env=name.upper())


def check_secret_string(context: CodeContext, cell: int, node: ast.Constant) -> None:
    """hardcoded-secret: a string with a credential's shape, or a URL holding a password."""
    text = str(node.value)
    what = _shape(text)
    password = _URL_PASSWORD.match(text)
    if password and _looks_secret(password.group(1)):
        what = what or "a password in a connection URL"
    if what:
        context.add(
            "hardcoded-secret",
            "error",
            cell,
            node,
            f"the notebook holds {what} in clear text",
            _fix(_target_name(context, node) or "api_token"),
        )


def _target_name(context: CodeContext, node: ast.AST) -> str:
    parent = context.parent(node)
    if isinstance(parent, ast.keyword):
        return parent.arg or ""
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            return target.id
        if isinstance(target, ast.Attribute):
            return target.attr
    if isinstance(parent, ast.AnnAssign) and isinstance(parent.target, ast.Name):
        return parent.target.id
    return ""


def check_secret_name(context: CodeContext, cell: int, node: ast.Constant) -> None:
    """hardcoded-secret: a literal given to a credential-named variable or argument."""
    name = _target_name(context, node)
    lowered = name.lower()
    if not name or not _SECRET_NAME.search(lowered) or _NOT_SECRET_NAME.search(lowered):
        return
    value = str(node.value)
    if _looks_secret(value) and not _shape(value) and not _URL_PASSWORD.match(value):
        context.add(
            "hardcoded-secret",
            "error",
            cell,
            node,
            f"`{name}` is given a credential in clear text",
            _fix(name),
        )


def _output_texts(cell: dict[str, Any]) -> list[str]:
    texts = []
    for output in cell.get("outputs") or []:
        if not isinstance(output, dict):
            continue
        parts = [output.get("text")]
        data = output.get("data")
        if isinstance(data, dict):
            parts.append(data.get("text/plain"))
        for part in parts:
            if isinstance(part, list):
                texts.append("".join(p for p in part if isinstance(p, str)))
            elif isinstance(part, str):
                texts.append(part)
    return texts


def check_output_secrets(notebook: Notebook) -> list[Finding]:
    """hardcoded-secret: a saved output showing a credential-shaped string."""
    out = []
    for index, cell in enumerate(notebook.raw["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        what = next((w for w in map(_shape, _output_texts(cell)) if w), None)
        if what:
            out.append(
                Finding(
                    "hardcoded-secret",
                    "error",
                    index,
                    f"the cell's saved output shows {what}",
                    "clear the output (Edit > Clear Outputs) and stop printing it; rotate the "
                    "credential, the file's history has it",
                )
            )
    return out
