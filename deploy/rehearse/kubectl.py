"""``kubectl`` for ``deploy/k8s/deploy.sh``, answered by the rehearsal instead of an API server.

The rehearsal runs ``deploy.sh`` itself, with ``KUBECTL`` pointing at this module (through
a small executable, see ``Api.shim``), so Secrets, databases and roll-outs are made by the
very script that makes them in production. The shim forwards each command over the
Unix socket ``VMRH_API`` to the rehearsal, which does what the API server and the
controllers would. Client-side commands (``--dry-run=client``: generating a Namespace or a
Secret as YAML) run the real kubectl in the shim's own process, since their input files
are the script's process substitutions (``/dev/fd/N``).

The commands deploy.sh uses, and only those, are served: ``apply -f -`` / ``apply -k``,
``get secret`` (``-o jsonpath={.data.KEY}``, ``-o json``), ``patch secret --type merge
--patch-file``, ``exec [-i] POD|deploy/NAME -c C -- CMD``, ``rollout status|restart``,
``wait --for=condition=complete job/NAME``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from deploy.rehearse.cluster import Cluster

Reply = tuple[int, str, str]


def _real_kubectl() -> str:
    return str(Path(sys.executable).parent / "kubectl")


class Api:
    """The rehearsal's side: a Unix socket answering the shim's commands."""

    def __init__(self, cluster: Cluster, socket_path: Path) -> None:
        self.cluster = cluster
        self.socket_path = socket_path
        api = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = json.loads(self.rfile.readline())
                try:
                    code, out, err = api.handle(list(request["argv"]), str(request["stdin"]))
                except Exception as exc:  # the shim prints it, as kubectl prints API errors
                    code, out, err = 1, "", f"error: {exc!r}\n"
                self.wfile.write(
                    json.dumps({"code": code, "out": out, "err": err}).encode() + b"\n"
                )

        self._server = socketserver.ThreadingUnixStreamServer(str(socket_path), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)

    def shim(self, directory: Path) -> Path:
        """An executable for ``KUBECTL`` that runs this module with this API's socket."""
        path = directory / "kubectl"
        root = Path(__file__).resolve().parents[2]
        path.write_text(
            "#!/bin/sh\n"
            f"VMRH_API={self.socket_path} PYTHONPATH={root} "
            f'exec {sys.executable} -m deploy.rehearse.kubectl "$@"\n'
        )
        path.chmod(0o755)
        return path

    # --- commands ---------------------------------------------------------------------------

    def handle(self, argv: list[str], stdin: str) -> Reply:
        namespace = "default"
        if argv[:1] == ["-n"]:
            namespace, argv = argv[1], argv[2:]
        verb, rest = argv[0], argv[1:]
        if verb == "apply":
            return self._apply(rest, stdin)
        if verb == "get" and rest[:1] == ["secret"]:
            return self._get_secret(namespace, rest[1:])
        if verb == "patch" and rest[:1] == ["secret"]:
            return self._patch_secret(namespace, rest[1], rest[2:])
        if verb == "exec":
            return self._exec(namespace, rest, stdin)
        if verb == "rollout":
            return self._rollout(namespace, rest)
        if verb == "wait":
            return self._wait(namespace, rest)
        return 1, "", f"error: the rehearsal's kubectl does not do {' '.join(argv)!r}\n"

    def _apply(self, args: list[str], stdin: str) -> Reply:
        from deploy.rehearse import render

        if args[:1] == ["-k"]:
            objects = render.render(Path(args[1]))
        elif args[:2] == ["-f", "-"]:
            objects = [o for o in yaml.safe_load_all(stdin) if o]
        else:
            return 1, "", f"error: apply {args}\n"
        self.cluster.apply(objects)
        return (
            0,
            "".join(f"{render.kind(o).lower()}/{render.name(o)} configured\n" for o in objects),
            "",
        )

    def _secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.cluster.secrets.get((namespace, name))

    def _get_secret(self, namespace: str, args: list[str]) -> Reply:
        name, options = args[0], args[1:]
        data = self._secret(namespace, name)
        if data is None:
            return 1, "", f'Error from server (NotFound): secrets "{name}" not found\n'
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        if options[:1] == ["-o"] and options[1].startswith("jsonpath={.data."):
            key = options[1].removeprefix("jsonpath={.data.").removesuffix("}")
            return 0, encoded.get(key, ""), ""
        if options[:2] == ["-o", "json"]:
            body = {"apiVersion": "v1", "kind": "Secret", "data": encoded}
            body["metadata"] = {"name": name, "namespace": namespace}
            return 0, json.dumps(body), ""
        return 0, f"{name}   Opaque   {len(data)}\n", ""

    def _patch_secret(self, namespace: str, name: str, args: list[str]) -> Reply:
        data = self._secret(namespace, name)
        if data is None:
            return 1, "", f'Error from server (NotFound): secrets "{name}" not found\n'
        patch = json.loads(args[args.index("--patch") + 1])
        data.update({k: str(v) for k, v in (patch.get("stringData") or {}).items()})
        data.update({k: base64.b64decode(v).decode() for k, v in (patch.get("data") or {}).items()})
        self.cluster.secrets_changed(namespace)
        return 0, f"secret/{name} patched\n", ""

    def _pod(self, namespace: str, target: str) -> Any:
        if "/" in target:
            _, workload = target.split("/", 1)
            pods = [
                p
                for p in self.cluster.pods
                if p.namespace == namespace and p.name.startswith(f"{workload}-")
            ]
            return pods[0]
        return self.cluster.pod(namespace, target)

    def _exec(self, namespace: str, args: list[str], stdin: str) -> Reply:
        split = args.index("--")
        options, command = args[:split], args[split + 1 :]
        options = [o for o in options if o != "-i"]
        container = options[options.index("-c") + 1] if "-c" in options else None
        target = next(
            o for i, o in enumerate(options) if o != "-c" and (i == 0 or options[i - 1] != "-c")
        )
        pod = self._pod(namespace, target)
        chosen = pod.container(container) if container else pod.containers[0]
        code, out = chosen.exec(command, 300.0, stdin)
        return code, out, ""

    def _timeout(self, args: list[str]) -> float:
        for arg in args:
            if arg.startswith("--timeout="):
                return float(arg.removeprefix("--timeout=").removesuffix("s"))
        return 300.0

    def _rollout(self, namespace: str, args: list[str]) -> Reply:
        action, targets = args[0], [a for a in args[1:] if not a.startswith("--")]
        for target in targets:
            _, name = target.split("/", 1)
            if action == "restart":
                self.cluster.restart_workload(namespace, name)
                continue
            self.cluster.wait(
                lambda n=name: self.cluster.workload_ready(namespace, n),  # type: ignore[misc]
                self._timeout(args),
                f"{target} did not roll out",
            )
        done = "restarted" if action == "restart" else "successfully rolled out"
        return 0, "".join(f"{t} {done}\n" for t in targets), ""

    def _wait(self, namespace: str, args: list[str]) -> Reply:
        target = next(a for a in args if not a.startswith("--"))
        _, name = target.split("/", 1)
        self.cluster.wait(
            lambda: self.cluster.workload_ready(namespace, name),
            self._timeout(args),
            f"{target} not complete",
        )
        return 0, f"{target} condition met\n", ""


def main(argv: list[str]) -> int:
    """The shim: client-side commands locally, the others through the rehearsal's socket."""
    if "--dry-run=client" in argv or argv[:1] == ["kustomize"]:
        # exec: the real kubectl keeps this process's descriptors (the /dev/fd/N inputs).
        os.execv(_real_kubectl(), [_real_kubectl(), *argv])  # noqa: S606
    stdin = sys.stdin.read() if ("-i" in argv or argv[-2:] == ["-f", "-"]) else ""
    for i, arg in enumerate(argv):  # a process substitution is readable here only
        if arg.startswith("--patch-file="):
            argv[i : i + 1] = ["--patch", Path(arg.removeprefix("--patch-file=")).read_text()]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(os.environ["VMRH_API"])
        sock.sendall(json.dumps({"argv": argv, "stdin": stdin}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    sys.stdout.write(answer["out"])
    sys.stderr.write(answer["err"])
    return int(answer["code"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
