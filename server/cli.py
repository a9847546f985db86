"""The ``consilium`` command.

    consilium serve              start the server (FHIR at /fhir) on the embedded store
    consilium token --scope S    print a bearer token the server on the same data dir accepts
    consilium keys list|rotate   manage the signing keys in the data dir
    consilium demo               load the demo telemedicine network into the data dir

Every option can also be set by an environment variable ``CONSILIUM_<NAME>`` (see
server/config.py); flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server import __version__
from server.config import Settings

log = logging.getLogger("consilium")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="where the store, keys and run files live (default ./data; "
                             "env CONSILIUM_DATA_DIR)")
    parser.add_argument("--db", metavar="URI",
                        help="store: empty for the embedded SQLite store under the data dir, or "
                             "a mongodb:// URI (env CONSILIUM_DB)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level (default info, and warning for import; env "
                             "CONSILIUM_LOG_LEVEL)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(data_dir=args.data_dir, db=args.db, log_level=args.log_level,
                             **extra)


# -- serve --------------------------------------------------------------------------------------

def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="start the server",
                       description="Start Consilium: the FHIR API at /fhir, /healthz, /metrics. "
                                   "Stops gracefully on SIGTERM or Ctrl-C.")
    _common(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1; env CONSILIUM_HOST)")
    p.add_argument("--port", "--http-port", dest="http_port", type=int,
                   help="HTTP port (default 8080; 0 disables HTTP; env CONSILIUM_HTTP_PORT)")
    p.add_argument("--dicom-port", type=int,
                   help="DICOM DIMSE port (default 11112; 0 disables; env CONSILIUM_DICOM_PORT). "
                        "The DICOM face is not part of this build yet.")
    p.add_argument("--mllp-port", type=int,
                   help="HL7 v2 MLLP port (default 2575; 0 disables; env CONSILIUM_MLLP_PORT). "
                        "The HL7 v2 face is not part of this build yet.")
    p.add_argument("--workers", type=int,
                   help="HTTP worker processes (default: the number of CPUs; "
                        "env CONSILIUM_WORKERS)")
    p.add_argument("--no-auth", action="store_true",
                   help="turn authorization OFF (local development only; env CONSILIUM_AUTH=off)")
    p.add_argument("--base-url", help="public base URL, e.g. https://tm.example.org "
                                      "(default: taken from each request's Host)")
    p.add_argument("--no-access-log", action="store_true",
                   help="do not log one line per request")
    p.add_argument("--model-check", action="store_true",
                   help="also check every write against the fhir.resources R4B models, after "
                        "the R4 validator (a second opinion; creates about a third slower; env "
                        "CONSILIUM_MODEL_CHECK)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, http_port=args.http_port,
                         dicom_port=args.dicom_port, mllp_port=args.mllp_port,
                         workers=args.workers, base_url=args.base_url,
                         auth=False if args.no_auth else None,
                         access_log=False if args.no_access_log else None,
                         model_check=True if args.model_check else None)
    from server import logs

    logs.setup(settings.log_level)
    if settings.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if not settings.auth:
        banner = ("AUTHORIZATION IS OFF: anyone who can reach this server can read and change "
                  "every record. Use --no-auth for local development only.")
        print(f"\n{'!' * 78}\n{banner}\n{'!' * 78}\n", file=sys.stderr)
        log.warning(banner, extra={"event": "auth.disabled"})
    _prepare_data_dir(settings)
    for face, port in (("dicom", settings.dicom_port), ("mllp", settings.mllp_port)):
        if port:
            log.info("face not available in this build", extra={"event": "face.unavailable",
                                                               "face": face, "port": port})
    if not settings.http_port:
        log.warning("HTTP disabled (port 0); nothing to serve",
                    extra={"event": "face.disabled", "face": "http"})
        return 0
    log.info("starting", extra={"event": "server.start", "version": __version__,
                                "http": f"{settings.host}:{settings.http_port}",
                                "workers": settings.workers,
                                "data_dir": str(settings.data_dir.resolve()),
                                "auth": settings.auth})
    _run_http(settings)
    log.info("stopped", extra={"event": "server.stop"})
    return 0


def _prepare_data_dir(settings: Settings) -> None:
    """Create the data dir, the schema and the keys once, before any worker starts."""
    from server.auth.keys import KeyStore
    from server.metrics import MULTIPROC_ENV
    from server.storage import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    KeyStore(settings.keys_dir).ensure()
    asyncio.run(open_store(settings).close())
    metrics_dir = settings.run_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir.resolve())


def _run_http(settings: Settings) -> None:
    import uvicorn

    common: dict[str, Any] = dict(host=settings.host, port=settings.http_port, http="httptools", loop="uvloop",
                  lifespan="on", access_log=False, log_config=None, server_header=False,
                  timeout_graceful_shutdown=30)
    if settings.workers == 1:
        from server.app import create_app

        config = uvicorn.Config(create_app(settings), **common)
        uvicorn.Server(config).run()
        return
    # Several workers: each process builds the app from the environment and listens on a
    # socket of its own (server.workers). Listeners that must run once per server (DICOM, MLLP,
    # job runners) belong in this supervising process.
    from server.workers import Supervisor

    os.environ.update(settings.to_env())
    config = uvicorn.Config("server.app:app_from_env", factory=True, **common)
    supervisor = Supervisor(config, settings.workers, grace=common["timeout_graceful_shutdown"])
    try:
        supervisor.listen()
    except OSError as exc:
        log.error(f"cannot listen on {settings.host}:{settings.http_port}: {exc}",
                  extra={"event": "server.cannot_listen"})
        sys.exit(1)
    supervisor.run()


# -- token and keys -----------------------------------------------------------------------------

def _token_parser(sub: Any) -> None:
    p = sub.add_parser("token", help="print a bearer token for this server",
                       description="Print a signed bearer token (ES256 JWT) that the server "
                                   "using the same data dir accepts.")
    _common(p)
    p.add_argument("--scope", default="system/*.cruds",
                   help="SMART scopes, space separated (default 'system/*.cruds'; "
                        "e.g. 'system/*.read', 'user/Patient.rs')")
    p.add_argument("--subject", default="admin", help="who the token is for (default admin)")
    p.add_argument("--lifetime", type=int, help="seconds until it expires (default 3600)")
    p.add_argument("--fhir-user", metavar="REF",
                   help="the user the token acts for, e.g. PractitionerRole/dr-li (the "
                        "workflow rules use it to tell who accepts, signs, cancels …)")
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    from server.auth.keys import KeyStore
    from server.auth.scopes import ScopeError, parse_scopes
    from server.auth.tokens import TokenService

    settings = _settings(args)
    try:
        if not parse_scopes(args.scope):
            print(f"no resource scope in {args.scope!r}", file=sys.stderr)
            return 2
    except ScopeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    tokens = TokenService(KeyStore(settings.keys_dir))
    extra = {"fhirUser": args.fhir_user} if args.fhir_user else {}
    print(tokens.issue(args.subject, args.scope, args.lifetime or settings.token_lifetime,
                       **extra))
    return 0


def _keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="list, rotate or remove signing keys",
                       description="Signing keys live in DATA_DIR/keys. Rotation makes a new key "
                                   "sign new tokens; old keys keep verifying until removed.")
    _common(p)
    p.add_argument("action", choices=["list", "rotate", "remove"])
    p.add_argument("kid", nargs="?", help="key id (for remove)")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    from server.auth.keys import KeyStore

    keys = KeyStore(_settings(args).keys_dir)
    if args.action == "rotate":
        print(keys.rotate())
    elif args.action == "remove":
        if not args.kid:
            print("keys remove needs a key id", file=sys.stderr)
            return 2
        try:
            keys.remove(args.kid)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    else:
        current = keys.ensure()
        for key in keys.jwks()["keys"]:
            print(key["kid"], "(current)" if key["kid"] == current else "")
    return 0


# -- import -------------------------------------------------------------------------------------

def _import_parser(sub: Any) -> None:
    from server.bulk.importer import CHUNK

    p = sub.add_parser(
        "import", help="load NDJSON or Bundle files into the store",
        description="Load FHIR resources from NDJSON files (one resource per line; .ndjson, "
                    ".ndjson.gz, .jsonl), Bundle files or single resources (.json, .json.gz). "
                    "Each resource is validated "
                    "and indexed as on the API; resources with an id keep it (a new version if "
                    "it changed), others get one derived from their content, so importing a "
                    "file again makes nothing twice. Transaction, batch and history Bundles are "
                    "processed as the API processes them; document and message Bundles are "
                    "stored whole. Works while a server runs on the same data dir. Ctrl-C "
                    "writes the chunks under way and stops; importing again completes it. "
                    "Exit status: 0 all imported; 1 some lines rejected (listed); 2 bad "
                    "arguments, files or data dir; 3 the store or a worker failed midway; "
                    "130/143 interrupted (SIGINT/SIGTERM).")
    _common(p)
    p.add_argument("files", nargs="+", type=_file_or_stdin, metavar="FILE",
                   help="NDJSON, Bundle or resource files, gzipped or not; - reads NDJSON "
                        "from stdin")
    p.add_argument("--atomic", action="store_true",
                   help="all or nothing: one rejected line and nothing is imported (one store "
                        "transaction: a server on the same data dir writes only once it ends)")
    p.add_argument("--rejects", type=Path, metavar="FILE",
                   help="write every rejected line there (FILE:LINE: why), not only the first "
                        "1,000 listed at the end")
    p.add_argument("--workers", type=_at_least_one,
                   help="processes that parse and validate (default: the number of CPUs)")
    p.add_argument("--model-check", action="store_true",
                   help="also check every resource against the fhir.resources R4B models, as "
                        "the API does (about three times slower; the R4 validator runs "
                        "either way)")
    p.add_argument("--chunk", type=_at_least_one, default=CHUNK, metavar="N",
                   help=f"resources per transaction (default {CHUNK:,}): larger chunks write "
                        "less and import faster, smaller ones use less memory and let a "
                        "server on the same data dir write sooner")
    p.add_argument("--base-url", help="the server's public base URL, e.g. https://tm.example.org "
                                      "(env CONSILIUM_BASE_URL): request URLs of Bundles "
                                      "absolute on it are taken as the server takes them")
    p.add_argument("--quiet", action="store_true", help="no progress bar, nor progress lines")
    p.add_argument("--progress-every", type=float, default=10, metavar="SECONDS",
                   help="when stderr is not a terminal (a log, a pipe), a progress line this "
                        "often, in place of the bar (default 10)")
    p.set_defaults(func=cmd_import)


def _file_or_stdin(text: str) -> Path:
    """``-`` is stdin; any other name a file, ``./-`` too (which a Path writes as ``-``)."""
    path = Path(text)
    return path if text == "-" or str(path) != "-" else path.absolute()


def _at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def cmd_import(args: argparse.Namespace) -> int:
    import multiprocessing
    import signal

    from tqdm import tqdm

    from server.bulk.importer import STDIN, Importer, WorkerDied
    from server.storage import open_store

    stdin = sum(str(f) == STDIN for f in args.files)
    if stdin > 1:
        print("consilium import: stdin (-) can be read once only", file=sys.stderr)
        return 2
    for f in args.files:
        if str(f) == STDIN:
            continue
        if not f.is_file():
            why = "a directory, not a file" if f.is_dir() else "no such file"
            print(f"consilium import: {f}: {why}", file=sys.stderr)
            return 2
        if args.rejects is not None and args.rejects.exists() and args.rejects.samefile(f):
            print(f"consilium import: --rejects {args.rejects} is one of the files to import; "
                  "name another file", file=sys.stderr)
            return 2
    settings = _settings(args, base_url=args.base_url)
    if args.rejects is not None and args.rejects.resolve().is_relative_to(
            settings.data_dir.resolve()):
        print(f"consilium import: --rejects {args.rejects} is in the data dir "
              f"{settings.data_dir}, where it could overwrite the store; name a file elsewhere",
              file=sys.stderr)
        return 2
    try:  # before anything is read: a store that cannot be opened is all there is to say
        asyncio.run(open_store(settings).close())
    except Exception as exc:
        print(f"consilium import: cannot open the store in {settings.data_dir}: {exc}",
              file=sys.stderr)
        return 2
    from server import logs

    logs.setup("warning" if not args.log_level else args.log_level)
    # Of files only: how much stdin holds is known once it is read.
    total = None if stdin else sum(f.stat().st_size for f in args.files)
    lines = not args.quiet and not sys.stderr.isatty()  # a log or a pipe: lines, not a bar
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="import",
               disable=args.quiet or lines, dynamic_ncols=True)
    started = told = time.monotonic()
    last: tuple[int, ...] = ()

    def progress(done: int, imported: int, rejected: int) -> None:
        nonlocal told, last
        bar.update(done - bar.n)
        now = time.monotonic()
        counts = (f"{imported:,} resources, {imported / max(now - started, 1e-9):,.0f}/s, "
                  f"{rejected:,} rejected")
        bar.set_postfix_str(counts, refresh=False)
        if lines and now - told >= args.progress_every and last != (done, imported, rejected):
            told, last = now, (done, imported, rejected)
            if total is None:
                read = f"{done / 2**20:,.1f} MiB read"
            else:
                read = f"{done / max(total, 1):.0%} of {total / 2**20:,.1f} MiB"
                if 0 < done < total:
                    read += f", about {(now - started) * (total - done) / done:,.0f} s to go"
            print(f"import: {read}, {counts}", file=sys.stderr, flush=True)

    async def run() -> Any:
        # This process writes only Bundles, unless the import is one (--atomic) transaction:
        # then a bulk writer, with the smallest page cache, which could not hold the pages of
        # the whole import anyway (its dirty pages go to the WAL as it fills).
        importer.store = open_store(settings, bulk=1 if args.atomic else 0)
        try:
            return await importer.run(list(args.files))
        finally:
            await importer.store.close()

    stopped_by: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        if importer.stopping.is_set():  # the second Ctrl-C: at once
            for child in multiprocessing.active_children():
                child.kill()
            if rejects is not None:
                rejects.flush()
            os._exit(128 + signum)  # what is committed stays; the chunks under way roll back
        stopped_by.append(signum)
        importer.stop()
        bar.write("interrupted: " + ("rolling back: nothing is imported" if args.atomic else
                                     "writing the chunks under way, then stopping")
                  + " (Ctrl-C again to stop at once)", file=sys.stderr)

    importer = Importer(None, settings, atomic=args.atomic, workers=args.workers,
                        model_check=args.model_check, chunk=args.chunk, progress=progress)
    rejects = open(args.rejects, "w", encoding="utf-8") if args.rejects else None  # noqa: SIM115
    if rejects is not None:
        def sink(r: Any) -> None:
            rejects.write(f"{r.source}:{r.line}: {r.message}\n")
        importer.report.sink = sink
    # Ours rather than asyncio's, which cancels the main task: that waits on the workers
    # without yielding, so the cancellation would never land. SIGTERM (a service manager's
    # stop) is taken as Ctrl-C.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    failure = None
    try:
        report = asyncio.run(run())
    except Exception as exc:  # the store failed (a full disk …): what is committed stays
        if isinstance(exc, WorkerDied):  # said in full below
            log.error("import failed", extra={"event": "import.failed", "reason": str(exc)})
        else:
            log.exception("import failed", extra={"event": "import.failed"})
        report, failure = importer.report, exc
        report.seconds = time.monotonic() - started
    finally:
        if rejects is not None:
            rejects.close()
    bar.close()
    log.info("import finished", extra={
        "event": "import.finished", "files": len(args.files), "imported": report.imported,
        "unchanged": report.unchanged, "rejected": report.rejected_count,
        "seconds": round(report.seconds, 1), "interrupted": report.interrupted,
        "failed": failure is not None})
    nothing = args.atomic and (report.rejected_count or report.interrupted or failure)
    print(f"imported {report.imported:,} resource{'' if report.imported == 1 else 's'}"
          + (f" ({report.unchanged:,} unchanged: already stored as they are)"
             if report.unchanged else "")
          + (f" ({report.bundles:,} Bundle{'' if report.bundles == 1 else 's'})"
             if report.bundles else "")
          + f" in {report.seconds:.1f} s ({report.rate:,.0f}/s); "
          f"rejected {report.rejected_count:,}"
          + (" — nothing imported (--atomic)" if nothing else ""))
    for r in report.rejected:  # in file order
        print(f"{r.source}:{r.line}: {r.message}", file=sys.stderr)
    if report.rejected_count > len(report.rejected):
        print(f"... and {report.rejected_count - len(report.rejected):,} more"
              + (f" (all in {args.rejects})" if args.rejects else " (--rejects FILE lists all)"),
              file=sys.stderr)
    again = ("importing them again completes it (resources already imported are unchanged, "
             "and not written again)")
    if failure is not None:
        print(f"consilium import: stopped by an error: {failure}; what is imported above stays"
              f"{'' if args.atomic else '; ' + again}", file=sys.stderr)
        # The pool cannot be shut down: its workers were killed (importer._pool), and its
        # queues' locks may have died with them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)
    if report.interrupted:
        print(f"consilium import: interrupted before the end of the files; {again}",
              file=sys.stderr)
        if stdin and not args.atomic:
            print(f"consilium import: stdin was imported through line "
                  f"{report.stdin_through:,}; send the lines after it again",
                  file=sys.stderr)
        return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
    return 1 if report.rejected_count else 0


# -- demo ---------------------------------------------------------------------------------------

def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="load the demo telemedicine network",
        description="Load a demo telemedicine network into the store of the data dir: a "
                    "regional centre, county hospitals and township health centres in Inner "
                    "Mongolia, a hospital and a health centre in Tehran (names in Chinese and "
                    "Persian, with English aliases), experts in several specialties, patients "
                    "with consent, and a week of consultations and referrals in every state, "
                    "some overdue now, with signed reports. It goes through the server's own "
                    "rules, with readable ids (Organization/regional-centre, "
                    "Task/consult-requested …), and works while a server runs on the same data "
                    "dir. Loading it again changes nothing.")
    _common(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server import logs
    from server.demo import DemoError, load

    settings = _settings(args)
    logs.setup("warning" if not args.log_level else args.log_level)
    bar = tqdm(total=None, unit=" requests", desc="demo", disable=args.quiet or None,
               dynamic_ncols=True)

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(what, refresh=False)

    try:
        summary = asyncio.run(load(settings, progress=progress))
    except DemoError as exc:
        bar.close()
        print(f"consilium demo: {exc}", file=sys.stderr)
        return 1
    bar.close()
    where = settings.data_dir
    if summary.already_loaded:
        print(f"the demo network is already loaded in {where} (List/consilium-demo); "
              "nothing changed")
    else:
        print(f"loaded the demo network into {where} in {summary.seconds:.1f} s "
              f"({summary.requests} requests)")
    print("  " + ", ".join(f"{n} {t}" for t, n in summary.counts.items()))
    print("  Tasks: " + ", ".join(f"{n} {s}" for s, n in summary.task_states.items())
          + f"; overdue now: {len(summary.overdue)}")
    print("  start with: Organization/regional-centre, Task/consult-requested, "
          "List/consilium-demo")
    return 0


PARSERS: list[Callable[[Any], None]] = [_serve_parser, _token_parser, _keys_parser,
                                        _import_parser, _demo_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consilium", description="Consilium: FHIR interoperability server for "
                                      "telemedicine networks.")
    parser.add_argument("--version", action="version", version=f"consilium {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear message, not a traceback, for operator errors
        from server.storage import StoreError

        if isinstance(exc, StoreError | ValueError | OSError):
            print(f"consilium: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
