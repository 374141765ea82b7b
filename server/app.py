"""One worker process: a grpc.aio server on uvloop serving payauth.v1 on a shared port.

Each worker binds the same port with SO_REUSEPORT, so the kernel spreads
connections across workers. SIGTERM drains it: health turns NOT_SERVING first
(so load balancers stop sending), in-flight calls get the grace period, then
the worker exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, MutableMapping, Sequence

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from payauth.server.accounts import Accounts
from payauth.server.authorize import AuthorizePipeline
from payauth.server.clock import clock_for
from payauth.server.config import Settings
from payauth.server.decision_core import CoreRegistry
from payauth.server.expiry import ExpirySweeper
from payauth.server.lifecycle import Lifecycle
from payauth.server.loyalty import LoyaltyEngine
from payauth.server.loyalty_store import LoyaltyStore
from payauth.server.metrics import flush_metrics, flush_metrics_every
from payauth.server.pan import PanHasher, load_or_create_key
from payauth.server.policies import IssuerPolicies
from payauth.server.servicers import Authorizer, IssuerControl, Loyalty
from payauth.server.store import Store
from payauth.server.worker_stalls import GcPauses, watch_event_loop
from payauth.v1 import (
    authorizer_pb2,
    authorizer_pb2_grpc,
    issuer_pb2,
    issuer_pb2_grpc,
    loyalty_pb2,
    loyalty_pb2_grpc,
)

log = logging.getLogger(__name__)

# How late a scrape may see a worker's counts (see metrics.flush_metrics).
METRICS_FLUSH_S = 0.1

SERVICE_NAMES = (
    authorizer_pb2.DESCRIPTOR.services_by_name["Authorizer"].full_name,
    issuer_pb2.DESCRIPTOR.services_by_name["IssuerControl"].full_name,
    loyalty_pb2.DESCRIPTOR.services_by_name["Loyalty"].full_name,
)

# Long-lived gateway connections are closed now and then so that clients
# reconnect and SO_REUSEPORT spreads them over the workers again.
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 1),
    # Scoring model dumps are uploaded whole (LoadModel), up to policies.MAX_MODEL_BYTES.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_connection_age_ms", 5 * 60 * 1000),
    ("grpc.max_connection_age_grace_ms", 30 * 1000),
)

# gRPC core's own settings, read from the environment when gRPC starts in a process: the
# supervisor sets them before it spawns the workers (`set_grpc_environment`).
GRPC_ENVIRONMENT = {
    # Accepted connections are served by iomgr's TCP server and endpoints instead of the
    # EventEngine's. An EventEngine endpoint reads and writes on the engine's own threads
    # and hands each completion to the thread that polls grpc.aio's completion queue,
    # which wakes the event loop: one thread more per event. Measured side by side
    # (benchmarks/grpc_stack, benchmarks/e2e): a fifth to a third fewer context switches
    # per call and per stream message, 5-20 % less worker CPU per Authorize.
    "GRPC_EXPERIMENTS": "-event_engine_listener",
}


def set_grpc_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put GRPC_ENVIRONMENT into `environ` for the processes started from it; a variable
    the operator set already is kept as it is."""
    for name, value in GRPC_ENVIRONMENT.items():
        environ.setdefault(name, value)


class GenericHandlersOnly:
    """The server as the generated `add_*Servicer_to_server` functions see it: each
    service is served by its generic handler alone, none as a registered method.

    grpc.aio's server keeps one pending request-call per registered method and waits
    on all of them (`asyncio.wait`, FIRST_COMPLETED) for every call it accepts, so
    each call paid for the ~30 methods of payauth's services: such a wait over 30
    futures costs about three and a half times one over a single future. Generic
    handlers share one pending request-call and are found by a dictionary lookup on
    the method's path.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
            self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
            self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Served by the service's generic handler, added beside this call."""


async def serve_worker(settings: Settings, redis_url: str, port: int, worker_index: int,
                       on_ready: Callable[[], None]) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    store = Store.connect(redis_url, settings.redis_cluster, settings.redis_timeout_s)
    pans = PanHasher(load_or_create_key(settings.pan_key_path, create=False))
    clock = clock_for(settings.clock_file)
    registry = CoreRegistry(store)
    await registry.reload()
    loyalty = LoyaltyEngine(LoyaltyStore(store), clock, settings.idempotency_ttl_s,
                            watch_block_ms=max(10, int(settings.redis_timeout_s * 500)))
    registry.on_program_change = loyalty.programs.forget
    grpc_server = grpc.aio.server(options=SERVER_OPTIONS)
    server = GenericHandlersOnly(grpc_server)
    authorizer_pb2_grpc.add_AuthorizerServicer_to_server(
        Authorizer(AuthorizePipeline(store, pans, settings, registry, clock, loyalty=loyalty),
                   Lifecycle(store, settings, clock)), server)
    issuer_pb2_grpc.add_IssuerControlServicer_to_server(
        IssuerControl(Accounts(store, pans, clock), IssuerPolicies(store, registry, clock)),
        server)
    loyalty_pb2_grpc.add_LoyaltyServicer_to_server(Loyalty(loyalty), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # As reflection.enable_server_reflection does for a grpc.aio.Server.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)), server)
    grpc_server.add_insecure_port(f"{settings.host}:{port}")
    await grpc_server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sweeper = ExpirySweeper(store, clock, settings.sweep_interval_s, worker_index,
                            settings.workers, loyalty.store)
    sweeping = asyncio.create_task(sweeper.run(stopping))
    watching = asyncio.create_task(registry.watch(stopping))
    flushing = asyncio.create_task(flush_metrics_every(METRICS_FLUSH_S, stopping))
    probing = asyncio.create_task(watch_event_loop(stopping))
    # What start-up made (modules, descriptors, compiled policies) lives as long as the
    # worker: out of the collector's sight, a full collection no longer walks it all
    # while calls wait.
    gc.freeze()
    on_ready()
    await stopping.wait()
    log.info("draining: health NOT_SERVING, waiting up to %.1f s for in-flight calls",
             settings.grace_s)
    await health_servicer.enter_graceful_shutdown()
    await grpc_server.stop(settings.grace_s)
    await sweeping
    await watching
    await flushing
    await probing
    flush_metrics()  # what the drained calls counted
    await store.close()


def run_worker(settings: Settings, redis_url: str, port: int, worker_index: int,
               on_ready: Callable[[], None]) -> None:
    """Entry point of a worker process: uvloop, then serve_worker."""
    with GcPauses():
        uvloop.run(serve_worker(settings, redis_url, port, worker_index, on_ready))
