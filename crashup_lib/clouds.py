"""The clouds.yaml (and secure.yaml) crashup's clients are built from, read by crashup before openstacksdk.

openstacksdk skips a clouds file it cannot read or parse (a warning at most, which may quote the line) and then says
"Cloud x was not found". So crashup first reads the files openstacksdk would pick, names what is wrong with them in
one line (file, line and column, never the line's text: it may hold a password), registers every secret in them
with the log redactor at once, and then has openstacksdk read exactly those files (nova.cloud_session).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from crashup_lib import files
from crashup_lib.log import one_line, register_secret

CLOUDS_MAX = 1 << 20         # bytes: a clouds file larger than this is not one, and is not read whole
_SECRET_KEY = re.compile(r"(?i)(password|passwd|secret|token|passcode)$")   # auth.password, ..._secret, token


class CloudsFileError(ValueError):
    """A clouds or secure file that cannot be used, as one line: 'clouds file <path>: <problem>'."""

    def __init__(self, path: str, problem: str):
        super().__init__(one_line(f"clouds file {path}: {problem}"))


def clouds_files(cfg) -> tuple[str | None, str | None]:
    """(clouds file, secure file) that openstacksdk would read for cfg: the first of its lists that exists, after
    $OS_CLIENT_CONFIG_FILE / $OS_CLIENT_SECURE_FILE. None: there is none."""
    from openstack.config import loader

    def first(variable: str, paths: list[str]) -> str | None:
        listed = [os.environ[variable], *paths] if os.environ.get(variable) else paths
        return next((p for p in listed if os.path.exists(p)), None)
    clouds_file = getattr(cfg, "clouds_file", "")
    found = first("OS_CLIENT_CONFIG_FILE", [clouds_file] if clouds_file else list(loader.CONFIG_FILES))
    if clouds_file and found is None:
        raise CloudsFileError(clouds_file, "cannot read it: No such file or directory")
    return found, first("OS_CLIENT_SECURE_FILE", list(loader.SECURE_FILES))


def read_clouds_file(path: str) -> Any:
    """The document in a clouds (or secure) file, its secrets registered with the log redactor before anything else
    is done with it; CloudsFileError naming the problem (where: line and column, never the text of the line, which
    may hold a password)."""
    import yaml                                     # with openstacksdk, which needs it: only when a cloud is loaded
    text = _clouds_text(path)
    try:
        doc = json.loads(text) if path.endswith("json") else yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CloudsFileError(path, f"not valid YAML{where}: {e.problem or e.context}") from None
    except json.JSONDecodeError as e:
        raise CloudsFileError(path, f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (yaml.YAMLError, ValueError) as e:      # e.g. a control character (yaml's ReaderError), a bad date
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CloudsFileError(path, f"not valid {'JSON' if path.endswith('json') else 'YAML'}: {first}") from None
    except RecursionError:
        raise CloudsFileError(path, "nested too deeply") from None
    _register_secrets(doc)
    if doc is not None and not isinstance(doc, dict):
        raise CloudsFileError(path, f"not a mapping with a 'clouds' key (the document is a {type(doc).__name__})")
    if doc and not isinstance(doc.get("clouds", {}), dict):
        raise CloudsFileError(path, "'clouds' is not a mapping of cloud names")
    return doc


def _clouds_text(path: str) -> str:
    try:
        return files.read_text(path, CLOUDS_MAX)          # a FIFO must not block a fence agent
    except files.FileProblem as e:
        raise CloudsFileError(path, str(e)) from None


def _register_secrets(doc: Any) -> None:
    """Every scalar under a key that names a secret, anywhere in the document. Iterative, each container once:
    YAML anchors can make a document refer to itself."""
    todo, seen = [doc], set()
    while todo:
        node = todo.pop()
        if id(node) in seen or not isinstance(node, (dict, list)):
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(value, (str, int, float)) \
                    and not isinstance(value, bool):
                register_secret(str(value))
            todo.append(value)
