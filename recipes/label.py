"""InstructGPT step 2 by people: rank the K responses per prompt in a local web page, for `make rm`.

Run after `make collect LABELER=human` (which samples the responses as tasks instead of ranking them):

    make label                    # serves http://127.0.0.1:8765 ; Ctrl-C stops it, nothing is lost
    make label-stats              # agreement between people and with the simulated labeler
    python recipes/label.py --config recipes/smollm2-135m/label/config_default.yaml [--port 0] [--host 0.0.0.0]

Every submission is written at once into `comparisons_dir`'s `rankings/{train,test}.jsonl`, the format `make rm`
trains on; restarting resumes at each person's first unranked task. Only this machine is answered unless `--host`
names another address. See `instructrl.labeling` and `instructrl.label_server`.
"""

import json
import socket

import uvicorn

from instructrl.cli import run_recipe
from instructrl.configs import LabelConfig, expand_path
from instructrl.errors import ConfigError
from instructrl.label_server import create_app, is_loopback
from instructrl.labeler import get_labeler
from instructrl.labeling import TaskStore, agreement


def main(args: LabelConfig) -> dict | None:
    store = TaskStore(expand_path(args.comparisons_dir), overlap=args.overlap)
    reference = args.reference_labeler or None
    if reference:
        get_labeler(reference)  # an unknown name is an error now, not at the first statistics request
    if args.stats:
        stats = agreement(store, get_labeler(reference) if reference else None)
        print(json.dumps(stats, indent=2))
        return stats
    store.write_rankings()  # the files `make rm` reads, as the log says (also after a crash between log and files)
    app = create_app(store, allow_remote=not is_loopback(args.host), reference_labeler=reference)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        raise ConfigError(f"Cannot serve on {args.host}:{args.port}: {err.strerror}. Choose another `port`.") from err
    sock.listen(128)  # connections made once the URL is printed wait in the backlog until uvicorn accepts them
    host, port = sock.getsockname()[:2]
    progress = store.progress()
    print(
        f"[instructrl] Ranking page: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ "
        f"({progress['ranked']} of {progress['total']} tasks ranked; Ctrl-C stops it, nothing is lost)",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return None


if __name__ == "__main__":
    run_recipe(main, (LabelConfig,))
