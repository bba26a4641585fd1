"""The ingest server: both servicers, health and reflection, and the import workers."""

from __future__ import annotations

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.app import Background, Built, Deps, new_server
from services.common.outbox import Outbox
from services.common.reconcile import ReconcileSettings
from services.common.runner import JobRunner, JobSweeper, RunnerSettings
from services.ingest import orphans
from services.ingest.datasets import Datasets
from services.ingest.members import UserDirectory
from services.ingest.projects import Projects
from services.ingest.servicer import IngestInternalServicer, IngestServicer
from services.ingest.settings import IngestSettings


async def build(deps: Deps, own: IngestSettings | None = None) -> Built:
    """`own`: this service's settings, read when the process started (else now)."""
    service_names = [
        ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
        ingest_pb2.DESCRIPTOR.services_by_name["IngestInternalService"].full_name,
    ]
    directory = UserDirectory(deps.channels.get(deps.settings.auth_addr), deps.settings.internal_secret)
    outbox = Outbox(deps.db.sessions, deps.bus, "ingest")
    projects = Projects(deps.db.sessions, outbox, find_user=directory.find)
    # Ingest owns the members table: it tells roles from its own database, not over gRPC.
    server, health = new_server(deps, service_names, roles=projects.role_rank)
    datasets = Datasets(deps.db.sessions, deps.blobs, deps.bus, own or IngestSettings.from_env(), outbox)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(projects, datasets), server)
    ingest_pb2_grpc.add_IngestInternalServiceServicer_to_server(IngestInternalServicer(projects, datasets), server)

    runner_settings = RunnerSettings.from_env()
    importers = [JobRunner(deps.db.sessions, deps.bus, datasets.import_job(), runner_settings, slot)
                 for slot in range(deps.settings.workers)]
    background: list[Background] = [importer.run for importer in importers]
    if importers:  # stalled imports are queued again or failed (services/common/runner.py)
        background.append(JobSweeper(importers[:1], runner_settings.sweep_every).run)
    background.append(datasets.sweep_forever)  # expired uploads lose their bytes
    background.append(outbox.relay)  # import work and deletion events, after their commit
    background.append(orphans.reconciler(deps.db.sessions, deps.blobs, ReconcileSettings.from_env()).run)
    return Built(server, health, service_names, deps.settings.listen_addr(deps.settings.ingest_addr), background)
