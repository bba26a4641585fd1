"""The `embedviz` command: log in, manage projects, upload, embed, map, search, export.

Every command prints a short human summary, or with `--json` exactly one JSON document on
stdout. Progress goes to stderr (none with `--quiet`). Expected failures print one line,
`error: CODE: message`, and exit with a code that tells them apart (docs/cli.md):

    0 ok · 1 a local problem (a file, the credentials file) · 2 bad usage
    3 a job FAILED · 4 a job was CANCELLED · 10 + the gRPC status code for a refused call
    (NOT_FOUND 15, PERMISSION_DENIED 17, UNAUTHENTICATED 26, ...) · 130 interrupted
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from embedviz.v1 import job_pb2
from embedviz_client.client import (
    CLUSTERING,
    DATA_FORMATS,
    EXPORT_FORMATS,
    METHODS,
    ApiError,
    Client,
    JobFailed,
    message_dict,
)
from embedviz_client.credentials import CredentialsError
from embedviz_client.progress import ProgressLine

if TYPE_CHECKING:
    import pandas as pd

EXIT_LOCAL = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_JOB_CANCELLED = 4
EXIT_INTERRUPTED = 130
CELL_WIDTH = 70


def exit_code(error: ApiError) -> int:
    """10 + the numeric gRPC status code, so each kind of refusal has its own exit code."""
    try:
        return 10 + int(grpc.StatusCode[error.code].value[0])
    except KeyError:
        return 10 + int(grpc.StatusCode.UNKNOWN.value[0])


class Output:
    """Where a command's result goes: one JSON document, or lines for a person."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def result(self, data: Any, human: str | Callable[[], str]) -> None:
        if self.as_json:
            json.dump(data, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
        else:
            text = human() if callable(human) else human
            if text:
                print(text)
        sys.stdout.flush()

    def progress(self, label: str) -> ProgressLine:
        return ProgressLine(label, enabled=not self.quiet)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (numpy numbers become plain numbers)."""
    parsed: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", date_format="iso"))
    return parsed


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table, cells cut at CELL_WIDTH characters except resource names, which
    a person copies into the next command."""

    def cell(value: Any, column: str) -> str:
        text = ", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)
        text = " ".join(text.split())
        return text if len(text) <= CELL_WIDTH or column == "name" else text[: CELL_WIDTH - 1] + "…"

    body = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in body)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in body]
    return "\n".join(lines)


def split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _state(job: job_pb2.Job) -> str:
    return job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _json_state(resource: dict[str, Any]) -> str:
    """The job state of a Dataset, Embedding or Projection as `message_dict` gives it."""
    state: str = resource.get("job", {}).get("state", "")
    return state.removeprefix("JOB_STATE_").lower()


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get("EMBEDVIZ_PASSWORD"):
        password = os.environ["EMBEDVIZ_PASSWORD"]
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        raise UsageError("no password: use --password-stdin, EMBEDVIZ_PASSWORD, or run it in a terminal")
    if not password:
        raise UsageError("the password is empty")
    return password


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked."""


# --- identity --------------------------------------------------------------------------


def cmd_signup(client: Client, args: argparse.Namespace, out: Output) -> int:
    user = client.sign_up(args.email, read_password(args), args.display_name or "")
    out.result(
        {"user": message_dict(user), "url": client.url, "credentials": str(client.store.path)},
        f"signed up and logged in as {user.email} ({user.name}) at {client.url}",
    )
    return 0


def cmd_login(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.api_key or args.api_key_stdin:
        secret = sys.stdin.readline().strip() if args.api_key_stdin else args.api_key
        if not secret:
            raise UsageError("the API key is empty")
        user = client.login_with_api_key(secret)
    elif args.email:
        user = client.login(args.email, read_password(args))
    else:
        raise UsageError("give --email (password login) or --api-key / --api-key-stdin")
    out.result(
        {"user": message_dict(user), "url": client.url, "credentials": str(client.store.path)},
        f"logged in as {user.email} ({user.name}) at {client.url}",
    )
    return 0


def cmd_logout(client: Client, args: argparse.Namespace, out: Output) -> int:
    if client.credentials is None:
        ended = client.store.delete()  # an unreadable session cannot be ended, only forgotten
    else:
        ended = client.logout()
    out.result({"logged_out": ended}, "logged out" if ended else "was not logged in")
    return 0


def cmd_whoami(client: Client, args: argparse.Namespace, out: Output) -> int:
    user = client.whoami()
    out.result(message_dict(user), f"{user.email} ({user.name}) at {client.url}")
    return 0


def cmd_api_keys_create(client: Client, args: argparse.Namespace, out: Output) -> int:
    made = client.create_api_key(args.display_name)
    out.result(
        {"api_key": message_dict(made.api_key), "secret": made.secret},
        f"{made.secret}\n(API key {made.api_key.name}; the secret is shown only now)",
    )
    return 0


def cmd_api_keys_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    keys = [message_dict(k) for k in client.list_api_keys()]
    out.result({"api_keys": keys}, lambda: table(keys, ["name", "display_name", "prefix", "last_used_time"]))
    return 0


def cmd_api_keys_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.delete_api_key(args.name)
    out.result({"deleted": args.name}, f"deleted {args.name}")
    return 0


# --- projects and datasets ---------------------------------------------------------------


PROJECT_COLUMNS = ["name", "display_name", "role", "description"]
DATASET_COLUMNS = ["name", "display_name", "rows", "state", "columns"]


def cmd_projects_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    projects = [message_dict(p) for p in client.list_projects()]
    out.result({"projects": projects}, lambda: table(projects, PROJECT_COLUMNS))
    return 0


def cmd_projects_create(client: Client, args: argparse.Namespace, out: Output) -> int:
    project = client.create_project(args.display_name, args.description or "")
    out.result(message_dict(project), f"created {project.name} ({project.display_name})")
    return 0


def cmd_projects_get(client: Client, args: argparse.Namespace, out: Output) -> int:
    project = client.project(args.project)
    found = message_dict(project)
    out.result(found, lambda: table([found], PROJECT_COLUMNS))
    return 0


def cmd_projects_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    project = client.project(args.project)
    client.delete_project(project.name)
    out.result({"deleted": project.name}, f"deleted {project.name} ({project.display_name})")
    return 0


def _dataset_summary(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": found["name"],
        "display_name": found["display_name"],
        "rows": found["row_count"],
        "state": _json_state(found),
        "columns": [c["name"] for c in found["columns"]],
    }


def cmd_datasets_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    datasets = [message_dict(d) for d in client.list_datasets(args.project)]
    out.result(
        {"datasets": datasets},
        lambda: table([_dataset_summary(d) for d in datasets], DATASET_COLUMNS),
    )
    return 0


def cmd_datasets_get(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = message_dict(client.get_dataset(args.dataset))
    out.result(found, lambda: table([_dataset_summary(found)], DATASET_COLUMNS))
    return 0


def cmd_datasets_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.delete_dataset(args.dataset)
    out.result({"deleted": args.dataset}, f"deleted {args.dataset}")
    return 0


def cmd_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    if not os.path.isfile(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    sending = out.progress("upload")
    importing = out.progress("import")
    started = time.monotonic()

    def on_job(job: job_pb2.Job) -> None:
        sending.finish()  # the bytes are all there once the import reports
        importing.job(job)

    try:
        dataset = client.upload(
            args.project,
            args.file,
            display_name=args.name or "",
            file_format=args.format or "",
            wait=not args.no_wait,
            on_bytes=sending.bytes_sent,
            on_job=on_job,
        )
    finally:
        sending.finish()
        importing.finish()
    found = message_dict(dataset)
    columns = ", ".join(c.name for c in dataset.columns)
    out.result(
        found,
        f"dataset {dataset.name}: {_state(dataset.job)}"
        + (f", {dataset.row_count:,} rows, columns {columns} ({time.monotonic() - started:.1f} s)" if columns else ""),
    )
    return 0


def cmd_rows(client: Client, args: argparse.Namespace, out: Output) -> int:
    frame = client.rows(args.dataset, columns=split_list(args.columns), filter=args.filter or "", limit=args.limit)
    frame = frame.reset_index()
    found, columns = records(frame), [str(c) for c in frame.columns]
    out.result({"columns": columns, "rows": found}, lambda: table(found, columns))
    return 0


# --- embeddings and maps ------------------------------------------------------------------


def cmd_models(client: Client, args: argparse.Namespace, out: Output) -> int:
    models = [message_dict(m) for m in client.list_models()]
    out.result(
        {"models": models}, lambda: table(models, ["name", "display_name", "dimension", "provider", "default"])
    )
    return 0


def _follow(out: Output, label: str) -> tuple[ProgressLine, Callable[[job_pb2.Job], None]]:
    line = out.progress(label)
    return line, line.job


def cmd_embed(client: Client, args: argparse.Namespace, out: Output) -> int:
    columns = [c for value in args.column or [] for c in split_list(value)]
    vectors = [c for value in args.vectors or [] for c in split_list(value)]
    if not columns and not vectors:
        raise SystemExit("embed: name the text column(s) with --column, or the vector column(s) with --vectors")
    line, on_job = _follow(out, "embedding")
    started = time.monotonic()
    try:
        embedding = client.embed(
            args.dataset, columns, template=args.template or "", model=args.model or "",
            vector_columns=vectors, wait=not args.no_wait, on_job=on_job,
        )
    finally:
        line.finish()
    out.result(
        message_dict(embedding),
        f"embedding {embedding.name}: {_state(embedding.job)}"
        + (
            f", {embedding.row_count:,} rows of {embedding.dimension} dimensions ({time.monotonic() - started:.1f} s)"
            if embedding.row_count
            else ""
        ),
    )
    return 0


def cmd_embeddings(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = [message_dict(e) for e in client.list_embeddings(args.dataset)]
    summary = [
        {"name": e["name"], "model": e["model"], "columns": e["text_columns"], "rows": e["row_count"],
         "state": _json_state(e)}
        for e in found
    ]
    out.result({"embeddings": found}, lambda: table(summary, ["name", "model", "columns", "rows", "state"]))
    return 0


def cmd_map(client: Client, args: argparse.Namespace, out: Output) -> int:
    line, on_job = _follow(out, "map")
    started = time.monotonic()
    try:
        projection = client.map(
            args.embedding,
            method=args.method,
            dimensions=args.dimensions,
            clustering=args.clustering,
            clusters=args.clusters,
            min_cluster_size=args.min_cluster_size,
            seed=args.seed,
            label_column=args.label_column or "",
            wait=not args.no_wait,
            on_job=on_job,
        )
    finally:
        line.finish()
    out.result(
        message_dict(projection),
        f"map {projection.name}: {_state(projection.job)}"
        + (
            f", {projection.point_count:,} points in {projection.cluster_count} clusters "
            f"({time.monotonic() - started:.1f} s)"
            if projection.point_count
            else ""
        ),
    )
    return 0


def cmd_maps(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = [message_dict(p) for p in client.list_projections(args.embedding)]
    summary = [
        {"name": p["name"], "method": p["method"].removeprefix("PROJECTION_METHOD_").lower(),
         "points": p["point_count"], "clusters": p["cluster_count"],
         "state": _json_state(p)}
        for p in found
    ]
    out.result({"maps": found}, lambda: table(summary, ["name", "method", "points", "clusters", "state"]))
    return 0


def cmd_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    line, on_job = _follow(out, "job")
    try:
        resource = client.watch(args.name, on_job)
    finally:
        line.finish()
    out.result(message_dict(resource), f"{resource.name}: {_state(resource.job)}")
    return 0


def cmd_clusters(client: Client, args: argparse.Namespace, out: Output) -> int:
    frame = client.clusters(args.map, level=args.level, all_levels=args.all_levels)
    found = records(frame)
    columns = ["cluster", "label", "size", "terms"]
    if args.all_levels:
        columns[3:3] = ["level", "parent"]
    out.result({"clusters": found}, lambda: table(found, columns))
    return 0


def _matches(frame: pd.DataFrame) -> tuple[list[dict[str, Any]], Callable[[], str]]:
    found = records(frame)
    for match in found:
        match["score"] = round(match["score"], 4)
    columns = [str(c) for c in frame.columns]
    return found, lambda: table(found, columns) if found else "no matches"


def cmd_search(client: Client, args: argparse.Namespace, out: Output) -> int:
    show = split_list(args.show) if args.show is not None else None
    frame = client.search(args.map, args.query, limit=args.limit, column=args.column or "", columns=show)
    found, human = _matches(frame)
    out.result({"map": args.map, "query": args.query, "matches": found}, human)
    return 0


def cmd_neighbours(client: Client, args: argparse.Namespace, out: Output) -> int:
    show = split_list(args.show) if args.show is not None else None
    frame = client.neighbors(args.map, args.row, limit=args.limit, columns=show)
    found, human = _matches(frame)
    out.result({"map": args.map, "row": args.row, "neighbors": found}, human)
    return 0


def cmd_export(client: Client, args: argparse.Namespace, out: Output) -> int:
    rows = [int(r) for r in split_list(args.rows)] if args.rows else []
    line = out.progress("export")
    try:
        written = client.export(
            args.map, args.out, file_format=args.format or "", columns=split_list(args.columns), rows=rows,
            on_bytes=line.bytes_received,
        )
    finally:
        line.finish()
    out.result(
        {"map": args.map, "path": os.path.abspath(args.out), "bytes": written},
        f"wrote {written:,} bytes to {args.out}",
    )
    return 0


# --- the parser -----------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--url, --json and --quiet, taken before or after the command."""
    keep = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--url", default=keep, help="the edge, e.g. http://127.0.0.1:8080 (default: EMBEDVIZ_URL, then the login's)"
    )
    parser.add_argument(
        "--json", action="store_true", default=False if defaults else argparse.SUPPRESS,
        help="print one JSON document on stdout",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=False if defaults else argparse.SUPPRESS,
        help="no progress on stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedviz",
        description="Command line client of embedviz: upload a table, embed it, map it, search it, export it.",
        epilog="Names are resource names as printed (projects/…/datasets/…). Docs: docs/cli.md.",
    )
    _common(parser, defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _common(shared, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any, name: str, handler: Callable[[Client, argparse.Namespace, Output], int], text: str,
        aliases: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=text, description=text, parents=[shared], aliases=list(aliases)
        )
        sub.set_defaults(handler=handler)
        return sub

    def password_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")

    sub = command(commands, "signup", cmd_signup, "create a user and log in as it")
    sub.add_argument("--email", required=True)
    sub.add_argument("--display-name")
    password_options(sub)

    sub = command(commands, "login", cmd_login, "log in with a password or an API key; the session is kept")
    sub.add_argument("--email", help="log in with this email and a password (prompted, or see --password-stdin)")
    password_options(sub)
    sub.add_argument("--api-key", help="log in with an API key (evk_...)")
    sub.add_argument("--api-key-stdin", action="store_true", help="read the API key from stdin")

    command(commands, "logout", cmd_logout, "end the session and forget it")
    command(commands, "whoami", cmd_whoami, "show who is logged in")

    keys = commands.add_parser("api-keys", help="API keys for scripts").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sub = command(keys, "create", cmd_api_keys_create, "create an API key (its secret is shown once)")
    sub.add_argument("display_name")
    command(keys, "list", cmd_api_keys_list, "list your API keys")
    sub = command(keys, "delete", cmd_api_keys_delete, "revoke an API key")
    sub.add_argument("name", help="users/…/apiKeys/…")

    projects = commands.add_parser("projects", help="projects").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    command(projects, "list", cmd_projects_list, "list your projects")
    sub = command(projects, "create", cmd_projects_create, "create a project")
    sub.add_argument("display_name")
    sub.add_argument("--description")
    sub = command(projects, "get", cmd_projects_get, "show a project")
    sub.add_argument("project", help="projects/…, its id, or its display name")
    sub = command(projects, "delete", cmd_projects_delete, "delete a project and everything in it")
    sub.add_argument("project", help="projects/…, its id, or its display name")

    datasets = commands.add_parser("datasets", help="datasets").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sub = command(datasets, "list", cmd_datasets_list, "list a project's datasets")
    sub.add_argument("project", help="projects/…, its id, or its display name")
    sub = command(datasets, "get", cmd_datasets_get, "show a dataset")
    sub.add_argument("dataset", help="projects/…/datasets/…")
    sub = command(datasets, "delete", cmd_datasets_delete, "delete a dataset and everything made from it")
    sub.add_argument("dataset", help="projects/…/datasets/…")

    sub = command(commands, "upload", cmd_upload, "upload a file as a dataset and follow its import")
    sub.add_argument("file")
    sub.add_argument("--project", "-p", required=True, help="projects/…, its id, or its display name")
    sub.add_argument("--name", help="the dataset's name (default: the file's)")
    sub.add_argument("--format", choices=sorted(DATA_FORMATS), help="default: guessed from the file")
    sub.add_argument("--no-wait", action="store_true", help="start the import and return")

    sub = command(commands, "rows", cmd_rows, "show rows of a dataset")
    sub.add_argument("dataset", help="projects/…/datasets/…")
    sub.add_argument("--columns", help="comma-separated (default: all)")
    sub.add_argument("--filter", help='e.g. \'topic = "space"\' or plain text (docs/ingest.md)')
    sub.add_argument("--limit", type=int, default=20, help="most rows (default 20)")

    command(commands, "models", cmd_models, "list the models this deployment embeds with")

    sub = command(commands, "embed", cmd_embed, "embed a dataset's text column(s) and follow the job")
    sub.add_argument("dataset", help="projects/…/datasets/…")
    sub.add_argument("--column", "-c", action="append", help="text column (repeat, or a,b)")
    sub.add_argument(
        "--vectors", action="append",
        help="instead of a model, the column of vectors (lists of numbers) or the numeric columns (repeat, or a,b)",
    )
    sub.add_argument("--template", help="how columns are joined, e.g. '{title}: {body}'")
    sub.add_argument("--model", help="models/… (default: the deployment's default)")
    sub.add_argument("--no-wait", action="store_true", help="start the job and return")

    sub = command(commands, "embeddings", cmd_embeddings, "list a dataset's embeddings")
    sub.add_argument("dataset", help="projects/…/datasets/…")

    sub = command(commands, "map", cmd_map, "make a 2-D or 3-D map of an embedding and follow the job")
    sub.add_argument("embedding", help="projects/…/datasets/…/embeddings/…")
    sub.add_argument("--method", choices=sorted(METHODS), default="umap")
    sub.add_argument("--dimensions", type=int, choices=(2, 3), default=2)
    sub.add_argument("--clustering", choices=sorted(CLUSTERING), default="auto",
                     help="auto: HDBSCAN by density, or k-means when --clusters is given")
    sub.add_argument("--clusters", "-k", type=int, default=0, help="k for k-means (default: from the row count)")
    sub.add_argument("--min-cluster-size", type=int, default=0,
                     help="HDBSCAN's smallest cluster (default: from the row count)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--label-column", help="a column of known labels, to measure the map against")
    sub.add_argument("--no-wait", action="store_true", help="start the job and return")

    sub = command(commands, "maps", cmd_maps, "list an embedding's maps")
    sub.add_argument("embedding", help="projects/…/datasets/…/embeddings/…")

    sub = command(commands, "watch", cmd_watch, "follow the job of a dataset, embedding or map to its end")
    sub.add_argument("name")

    sub = command(commands, "clusters", cmd_clusters, "list a map's clusters and their labels")
    sub.add_argument("map", help="projects/…/projections/…")
    sub.add_argument("--level", type=int, default=0, help="0: the finest clusters (default); 1, 2: coarser ones")
    sub.add_argument("--all-levels", action="store_true", help="every level, with each cluster's parent")

    sub = command(commands, "search", cmd_search, "find rows by meaning (or by substring in --column)")
    sub.add_argument("map", help="projects/…/projections/…")
    sub.add_argument("query")
    sub.add_argument("--column", help="search this column's text instead of by meaning")
    sub.add_argument("--limit", type=int, default=10)
    sub.add_argument("--show", help="columns to show (default: the embedded text columns; '' for none)")

    sub = command(commands, "neighbours", cmd_neighbours, "a row's nearest neighbours", aliases=["neighbors"])
    sub.add_argument("map", help="projects/…/projections/…")
    sub.add_argument("row", type=int)
    sub.add_argument("--limit", type=int, default=10)
    sub.add_argument("--show", help="columns to show (default: the embedded text columns; '' for none)")

    sub = command(commands, "export", cmd_export, "write a map's points with chosen columns to a file")
    sub.add_argument("map", help="projects/…/projections/…")
    sub.add_argument("--out", "-o", required=True, help="the file; its extension picks the format")
    sub.add_argument("--format", choices=sorted(EXPORT_FORMATS))
    sub.add_argument("--columns", help="dataset columns to add, comma-separated")
    sub.add_argument("--rows", help="only these row indexes, comma-separated")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args.json, args.quiet)
    try:
        # A new login replaces the saved session, so an unreadable one is no obstacle to it.
        load_saved = args.handler not in (cmd_signup, cmd_login)
        try:
            client = Client(url=args.url, load_saved=load_saved)
        except CredentialsError:
            if args.handler is not cmd_logout:
                raise
            client = Client(url=args.url, load_saved=False)
        with client:
            code: int = args.handler(client, args, out)
            return code
    except ApiError as error:
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
        return exit_code(error)
    except JobFailed as failure:
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_JOB_CANCELLED if failure.job.state == job_pb2.JOB_STATE_CANCELLED else EXIT_JOB_FAILED
    except (UsageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (CredentialsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LOCAL
    except KeyboardInterrupt:
        print("\ninterrupted; a started job goes on on the server (`embedviz watch NAME` follows it)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
