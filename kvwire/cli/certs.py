"""``kvwire certs DIR``: a development CA, and the node and client certificates it signs."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..testing.certs import DEFAULT_DAYS, DEFAULT_HOSTS, DevCerts, canonical_host, unmatchable_host
from .options import DirectoryPath


@click.command()
@click.argument("directory", type=DirectoryPath())
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help=f"Another IP address or DNS name the node certificate is good for, besides {', '.join(DEFAULT_HOSTS)}; repeat for more.")
@click.option("--days", type=click.IntRange(min=1, max=3650), default=DEFAULT_DAYS, show_default=True,
              help="How long the certificates are valid.")
@click.option("--force", is_flag=True, help="Replace the certificates DIRECTORY already holds (nodes and clients then need the new ones).")
def certs(directory: Path, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Write a development CA and a node and a client certificate it signs to DIRECTORY.

    \b
    ca.pem, ca.key           the CA; ca.key signs, keep it to yourself
    node.pem, node.key       for every node (and bridge): serverAuth and clientAuth
    client.pem, client.key   for clients: clientAuth
    haproxy.pem              node.pem and node.key in one file, for HAProxy

    Keys are ECDSA P-256, written with mode 600. For development and tests:
    in production, use certificates from your own CA.
    """
    dev = DevCerts(directory)
    existing = dev.existing()
    if existing and not force:
        raise click.ClickException(f"{existing[0]} exists; --force replaces every certificate in {directory}")
    for host in hosts:
        if (why := unmatchable_host(host)) is not None:
            raise click.UsageError(why)
    try:
        DevCerts.create(directory, hosts=hosts, days=days)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write to {exc.filename or directory}: {exc.strerror or exc}; "
                                   "nothing was changed") from None
    click.echo(f"wrote a development CA and certificates to {directory}, good for {', '.join(dict.fromkeys(canonical_host(host) for host in [*DEFAULT_HOSTS, *hosts]))}")
    click.echo("nodes:   kvwire serve " + shlex.join(dev.node_args()) + " ...")
    click.echo("clients: export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in dev.client_env().items()))
