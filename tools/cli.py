"""The `streamvault` command.

    streamvault standalone [--data-dir DIR] [--port 9090] [--workers N] [--containers N]
                           [--worker-port-base 12345 | --ephemeral-ports] [--no-direct-io]
                           [--replicas 3 --ack-quorum 2]
    streamvault status [--json] [--controller tcp://127.0.0.1:9090]
    streamvault log inspect --data-dir DIR [--entries] [--json]

Role processes (started by `standalone`, or by hand in a cluster):

    streamvault controller --data-dir DIR --bind URL --containers N
    streamvault host --data-dir DIR --workers N --containers N --controller URL
    streamvault worker --id I --data-dir DIR --containers 0,4 --container-count N --bind URL
                       [--bookies 0=URL,1=URL,2=URL [--standby]]
    streamvault bookie --data-dir DIR --port P [--controller URL]
"""

from __future__ import annotations

import argparse
import sys

from streamvault.client.protocol.errors import StreamVaultError
from streamvault.client.protocol.sizes import parse_size
from streamvault.tools import process

DEFAULT_CONTROLLER = "tcp://127.0.0.1:9090"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvault", description="durable stream storage")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("standalone", help="run a whole cluster on this machine")
    p.add_argument("--data-dir", default="./streamvault-data")
    p.add_argument(
        "--port",
        type=int,
        default=9090,
        help="controller port (default 9090; 0: a free port, named in the ready line)",
    )
    p.add_argument("--workers", type=int, default=0, help="workers (default: usable cores)")
    p.add_argument(
        "--containers",
        type=int,
        default=0,
        help="containers, fixed at creation (default 4 x workers)",
    )
    p.add_argument(
        "--worker-port-base",
        type=int,
        default=12345,
        help="worker i listens on base+i (default 12345; 0 = ephemeral)",
    )
    p.add_argument(
        "--ephemeral-ports",
        action="store_true",
        help="put every worker on an ephemeral port (same as --worker-port-base 0)",
    )
    p.add_argument("--no-direct-io", action="store_true", help="never use O_DIRECT")
    p.add_argument("--no-pin", action="store_true", help="do not pin workers to cores")
    p.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="log replicas: run this many bookies (E = Qw = replicas); default: one embedded",
    )
    p.add_argument(
        "--ack-quorum",
        type=int,
        default=0,
        help="durable copies before an ack (default: a majority of --replicas)",
    )
    p.add_argument(
        "--bookie-port-base", type=int, default=3181, help="bookie i listens on base+i (tcp)"
    )
    p.add_argument(
        "--bookie-transport",
        choices=["ipc", "tcp"],
        default="ipc",
        help="how the workers reach the bookies: ipc (a Unix socket, cheaper per byte; "
        "default) or tcp on 127.0.0.1 (--bookie-port-base)",
    )
    p.add_argument(
        "--journal-file-size",
        type=parse_size,
        default=256 << 20,
        help="bookie journal file size, K/M/G suffix allowed (default 256M)",
    )
    _storage_options(p)
    _common(p)

    p = sub.add_parser("status", help="show every process of a running cluster")
    p.add_argument("--controller", default=DEFAULT_CONTROLLER)
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)

    p = sub.add_parser("log", help="durable-log tools")
    log_sub = p.add_subparsers(dest="log_command", required=True)
    q = log_sub.add_parser("inspect", help="list ledgers and entries, verify every CRC")
    q.add_argument("--data-dir", required=True)
    q.add_argument("--entries", action="store_true", help="list every entry")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("controller", help="run the controller")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--bind", default=DEFAULT_CONTROLLER)
    p.add_argument("--containers", type=int, default=0)
    _common(p)

    p = sub.add_parser("host", help="run a segment-store host (supervises workers)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--containers", type=int, required=True)
    p.add_argument("--controller", default=DEFAULT_CONTROLLER)
    p.add_argument("--worker-port-base", type=int, default=12345)
    p.add_argument("--host-id", default="0")
    p.add_argument("--no-direct-io", action="store_true")
    p.add_argument("--no-pin", action="store_true")
    _storage_options(p)
    _replication_options(p)
    _common(p)

    p = sub.add_parser("worker", help="run one segment-store worker")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--containers", required=True, help="comma-separated container ids")
    p.add_argument("--container-count", type=int, required=True)
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--controller", default="")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--no-direct-io", action="store_true")
    p.add_argument("--cache-path", default="")
    p.add_argument("--lts", default="")
    p.add_argument("--s3-endpoint", default=None)
    p.add_argument("--uploader", default="")
    p.add_argument("--flush-bytes", type=int, default=8 << 20)
    p.add_argument("--upload-bytes", type=int, default=64 << 20)
    p.add_argument("--flush-wait", type=float, default=30.0)
    p.add_argument("--ledger-size", type=parse_size, default=128 << 20)
    p.add_argument(
        "--standby",
        action="store_true",
        help="take the containers over only once no live worker serves them (needs "
        "--controller, --bookies, the owner's --data-dir coordination store and --lts)",
    )
    _replication_options(p)
    _common(p)

    p = sub.add_parser("bookie", help="run a log replica (ledger entries in its journal)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=int, default=0, help="listen on tcp://127.0.0.1:PORT")
    p.add_argument("--bind", default="", help="endpoint to bind (overrides --port)")
    p.add_argument("--id", default="0")
    p.add_argument("--controller", default="", help="send heartbeats here (for status)")
    p.add_argument("--no-direct-io", action="store_true")
    p.add_argument(
        "--journal-file-size",
        type=parse_size,
        default=256 << 20,
        help="journal file size, K/M/G suffix allowed (default 256M)",
    )
    _common(p)

    p = sub.add_parser("uploader", help="run a host's LTS uploader")
    p.add_argument("--bind", required=True)
    p.add_argument("--cache-path", required=True)
    p.add_argument("--lts", required=True)
    p.add_argument("--s3-endpoint", default=None)
    p.add_argument("--controller", default="")
    _common(p)
    return parser


def _replication_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bookies", default="", help="replicated log: id=endpoint,... of bookies")
    p.add_argument("--ensemble", type=int, default=0, help="bookies per ledger (write quorum)")
    p.add_argument("--ack-quorum", type=int, default=0, help="durable copies before an ack")


def parse_bookies(spec: str) -> dict[str, str]:
    """`0=tcp://127.0.0.1:3181,1=...` -> {"0": "tcp://127.0.0.1:3181", ...}."""
    bookies: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        bookie, sep, endpoint = item.partition("=")
        if not sep or not bookie or not endpoint or bookie in bookies:
            raise ValueError(f"--bookies: {item!r} is not a new id=endpoint")
        bookies[bookie] = endpoint
    return bookies


def _replication(args: argparse.Namespace):
    if not args.bookies:
        return None
    from streamvault.dataplane.log.replicated_log import ReplicationConfig

    bookies = parse_bookies(args.bookies)
    ensemble = args.ensemble or len(bookies)
    return ReplicationConfig(
        bookies=bookies,
        ensemble=ensemble,
        write_quorum=ensemble,
        ack_quorum=args.ack_quorum or ensemble // 2 + 1,
    )


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-size",
        type=parse_size,
        default=0,
        help="shared cache bytes, K/M/G suffix allowed (default 25%% of RAM, <= 1G)",
    )
    p.add_argument(
        "--lts",
        default="",
        help="long-term storage: file:DIR or s3://BUCKET[/PREFIX] (default file:<data-dir>/lts)",
    )
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (for s3:// LTS)")
    p.add_argument(
        "--flush-wait",
        type=float,
        default=30.0,
        help="seconds before a segment's new bytes go to LTS anyway (default 30; an idle "
        "container's go after 5 s without a write)",
    )
    p.add_argument(
        "--ledger-size",
        type=parse_size,
        default=128 << 20,
        help="durable-log ledger file size, K/M/G suffix allowed (default 128M)",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except StreamVaultError as exc:
        print(f"streamvault {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"streamvault {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "status":
        from streamvault.tools import status

        print(status.render(status.fetch(args.controller, args.timeout), args.json))
        return 0
    if args.command == "log":
        from streamvault.tools import log_inspect

        reports, error = log_inspect.inspect(args.data_dir, entries=args.entries)
        print(log_inspect.render(reports, error, args.json))
        return 1 if error else 0
    if args.command == "standalone":
        from streamvault.tools.standalone import StandaloneConfig, run

        process.set_title("standalone", "0")
        process.configure_logging(args.log_level, "standalone", "0")
        return run(
            StandaloneConfig(
                data_dir=args.data_dir,
                port=args.port,
                workers=args.workers,
                containers=args.containers,
                worker_port_base=0 if args.ephemeral_ports else args.worker_port_base,
                allow_direct_io=not args.no_direct_io,
                pin_cpus=not args.no_pin,
                log_level=args.log_level,
                cache_bytes=args.cache_size,
                lts=args.lts,
                s3_endpoint=args.s3_endpoint,
                flush_wait_s=args.flush_wait,
                ledger_bytes=args.ledger_size,
                replicas=args.replicas,
                ack_quorum=args.ack_quorum,
                bookie_port_base=0 if args.ephemeral_ports else args.bookie_port_base,
                bookie_transport=args.bookie_transport,
                journal_file_bytes=args.journal_file_size,
            )
        )
    if args.command == "controller":
        from streamvault.controlplane.controller import ControllerConfig, run

        process.die_with_parent(args.parent_pid)
        process.set_title("controller", "0")
        process.configure_logging(args.log_level, "controller", "0")
        return run(
            ControllerConfig(
                data_dir=args.data_dir, bind=args.bind, container_count=args.containers
            )
        )
    if args.command == "host":
        from streamvault.dataplane.host import HostConfig, run

        process.die_with_parent(args.parent_pid)
        process.set_title("host", args.host_id)
        process.configure_logging(args.log_level, "host", args.host_id)
        return run(
            HostConfig(
                data_dir=args.data_dir,
                workers=args.workers,
                container_count=args.containers,
                controller=args.controller,
                worker_port_base=args.worker_port_base,
                host_id=args.host_id,
                allow_direct_io=not args.no_direct_io,
                pin_cpus=not args.no_pin,
                log_level=args.log_level,
                cache_bytes=args.cache_size,
                lts=args.lts,
                s3_endpoint=args.s3_endpoint,
                flush_wait_s=args.flush_wait,
                ledger_bytes=args.ledger_size,
                bookies=args.bookies,
                ensemble=args.ensemble,
                ack_quorum=args.ack_quorum,
            )
        )
    if args.command == "bookie":
        from streamvault.dataplane.log.bookie import BookieConfig, run
        from streamvault.dataplane.log.journal import DEFAULT_CONFIG as DEFAULT_JOURNAL_CONFIG
        from streamvault.dataplane.log.journal import JournalConfig

        process.die_with_parent(args.parent_pid)
        process.set_title("bookie", args.id)
        process.configure_logging(args.log_level, "bookie", args.id)
        bind = args.bind or f"tcp://127.0.0.1:{args.port or '*'}"
        return run(
            BookieConfig(
                data_dir=args.data_dir,
                bind=bind,
                bookie_id=args.id,
                controller=args.controller,
                journal=JournalConfig(
                    file_bytes=args.journal_file_size,
                    commit_bytes_max=min(
                        DEFAULT_JOURNAL_CONFIG.commit_bytes_max, args.journal_file_size
                    ),
                    direct=not args.no_direct_io,
                ),
            )
        )
    if args.command == "uploader":
        from streamvault.dataplane.uploader import UploaderConfig, run

        process.die_with_parent(args.parent_pid)
        process.set_title("uploader", "0")
        process.configure_logging(args.log_level, "uploader", "0")
        return run(
            UploaderConfig(
                bind=args.bind,
                cache_path=args.cache_path,
                lts=args.lts,
                s3_endpoint=args.s3_endpoint,
                controller=args.controller,
            )
        )
    if args.command == "worker":
        from streamvault.dataplane.container.tiering import TieringConfig
        from streamvault.dataplane.log import LogConfig
        from streamvault.dataplane.worker import WorkerConfig, run

        process.die_with_parent(args.parent_pid)
        process.set_title("worker", str(args.id))
        process.configure_logging(args.log_level, "worker", str(args.id))
        containers = tuple(int(c) for c in args.containers.split(",") if c)
        return run(
            WorkerConfig(
                worker_id=args.id,
                data_dir=args.data_dir,
                containers=containers,
                container_count=args.container_count,
                bind=args.bind,
                controller=args.controller,
                cpu=args.cpu,
                allow_direct_io=not args.no_direct_io,
                cache_path=args.cache_path,
                lts=args.lts,
                s3_endpoint=args.s3_endpoint,
                uploader=args.uploader,
                log=LogConfig(ledger_bytes=args.ledger_size),
                tiering=TieringConfig(
                    flush_bytes=args.flush_bytes,
                    flush_wait_s=args.flush_wait,
                    upload_bytes_max=args.upload_bytes,
                ),
                replication=_replication(args),
                standby=args.standby,
            )
        )
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
