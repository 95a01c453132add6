"""The five scenarios of issue 6, each run against one `Target` (Parley or the bare echo server)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.api import Api, bounded
from bench.config import Config
from bench.ledger import Ledger, Phase
from bench.loadgen import (
    Acknowledger,
    ReceiptClock,
    Sender,
    SendStats,
    Session,
    Tasks,
    Traffic,
    body_of,
    close_sessions,
    drain,
    offer,
    open_sessions,
    send_now,
)
from bench.results import Accounting, IdleResult, Latency, MemoryResult, RampResult, Step, StormResult
from bench.stack import Target


@dataclass
class Load:
    """The moving parts of one scenario run: ledger, background tasks, acknowledgements, sessions."""

    config: Config
    receipts: ReceiptClock | None = None
    ledger: Ledger = field(default_factory=Ledger)
    tasks: Tasks = field(default_factory=Tasks)
    sends: SendStats = field(default_factory=SendStats)
    sessions: list[Session] = field(default_factory=list)
    acks: Acknowledger = field(init=False)
    traffic: Traffic = field(init=False)

    def __post_init__(self) -> None:
        on_sent = self.receipts.ack_sent if self.receipts is not None else None
        self.acks = Acknowledger(self.tasks, self.config.ack_interval, on_sent)
        self.traffic = Traffic(self.ledger, self.acks, self.receipts)

    async def connect(self, target: Target, tokens: Sequence[str], *, first_index: int = 0) -> list[Session]:
        """Opens subscribed sessions for these tokens (device indices from `first_index`)."""
        sessions = await open_sessions(
            target.ws_urls,
            tokens,
            self.traffic.on_event,
            first_index=first_index,
            concurrency=self.config.connect_concurrency,
        )
        self.sessions.extend(sessions)
        return sessions

    async def settle_arrivals(self) -> None:
        """Gives deliveries still owed one last grace period (late is not lost)."""
        deadline = time.monotonic() + self.config.grace_seconds
        while time.monotonic() < deadline:
            if not self.ledger.lost() and not self.sends.in_flight:
                return
            await asyncio.sleep(0.05)

    def accounting(self) -> Accounting:
        """Losses, duplicates and errors over the whole run."""
        stream_errors = [error for session in self.sessions for error in session.errors]
        ended = sum(1 for session in self.sessions if session.stream_ended or session.closed)
        first_error = self.sends.first_error or self.acks.first_error or (stream_errors[0] if stream_errors else None)
        return Accounting(
            losses=self.ledger.lost(),
            duplicates=self.ledger.duplicates,
            misrouted=self.ledger.misrouted + self.ledger.unknown,
            send_errors=self.sends.errors,
            ack_errors=self.acks.errors,
            stream_errors=len(stream_errors) + ended,
            first_error=first_error,
        )

    async def close(self) -> None:
        """Stops background work and closes every session."""
        await self.tasks.cancel()
        await close_sessions(self.sessions)


async def _step(
    load: Load,
    target: Target,
    senders: Sequence[Sender],
    phase: Phase,
    *,
    rate: float,
    seconds: float,
    recipients: float,
) -> Step:
    config = load.config
    if load.receipts is not None:
        load.receipts.phase = phase
    server_before, client_before, started = target.cpu_seconds(), time.process_time(), time.monotonic()
    await offer(load.ledger, load.sends, load.tasks, senders, phase, rate=rate, duration=seconds)
    await drain(phase, load.sends, grace=config.grace_seconds, cap=max(30.0, 3 * seconds))
    wall = time.monotonic() - started
    return Step.of(
        phase,
        offered=rate,
        recipients=recipients,
        seconds=seconds,
        server_cpu=(target.cpu_seconds() - server_before) / wall,
        client_cpu=(time.process_time() - client_before) / wall,
    )


def _judge(step: Step, config: Config, latency_target_ms: float) -> None:
    p99 = step.last_member.p99
    if step.achieved_deliveries_per_s < config.saturation_share * step.offered_deliveries_per_s:
        step.saturated = True
        step.saturation_reason = (
            f"achieved {step.achieved_deliveries_per_s:g} < {config.saturation_share:.0%} of offered"
            f" {step.offered_deliveries_per_s:g} deliveries/s"
        )
    elif p99 is None or p99 > config.explode_factor * latency_target_ms:
        step.saturated = True
        step.saturation_reason = f"p99 {p99} ms > {config.explode_factor:g} x {latency_target_ms:g} ms"


async def _ramp(
    load: Load,
    target: Target,
    senders: Sequence[Sender],
    rates: Sequence[float],
    *,
    recipients: float,
    latency_target_ms: float,
    per_delivery: bool,
) -> RampResult:
    """Warm-up (one message per sender), then each rate in turn until the first saturated step."""
    config = load.config
    warm_phase = Phase("warmup")
    warmup = await _step(load, target, senders, warm_phase, rate=len(senders), seconds=1.0, recipients=recipients)
    phases: list[tuple[Phase, Step]] = []
    for rate in rates:
        phase = Phase(f"{rate:g}/s")
        seconds = max(config.step_seconds, min(config.max_step_seconds, config.min_step_messages / rate))
        step = await _step(load, target, senders, phase, rate=rate, seconds=seconds, recipients=recipients)
        _judge(step, config, latency_target_ms)
        phases.append((phase, step))
        print(
            f"  {target.name:6} {rate:7g} msg/s: achieved {step.achieved_messages_per_s:8g} msg/s "
            f"{step.achieved_deliveries_per_s:9g} deliveries/s, p99 {step.last_member.p99} ms, "
            f"server {step.server_cpu:.2f} / client {step.client_cpu:.2f} cores"
            + (f" — saturated: {step.saturation_reason}" if step.saturated else ""),
            flush=True,
        )
        if step.saturated:
            break
    await load.settle_arrivals()
    for phase, step in phases:
        # Late arrivals after the step's drain are slow, not lost.
        step.losses = load.ledger.lost(phase)
        step.delivered = phase.delivered
        step.duplicates = phase.duplicates
    good = [
        step.achieved_deliveries_per_s if per_delivery else step.achieved_messages_per_s
        for _, step in phases
        if not step.saturated
        and step.losses == 0
        and step.duplicates == 0
        and step.send_errors == 0
        and step.last_member.p99 is not None
        and step.last_member.p99 <= latency_target_ms
    ]
    return _ramp_result(
        load, target, phases, warmup, good, latency_target_ms=latency_target_ms, per_delivery=per_delivery
    )


def _ramp_result(
    load: Load,
    target: Target,
    phases: list[tuple[Phase, Step]],
    warmup: Step,
    good: list[float],
    *,
    latency_target_ms: float,
    per_delivery: bool,
) -> RampResult:
    saturated = next((step for _, step in phases if step.saturated), None)
    offered = achieved = None
    if saturated is not None:
        offered = saturated.offered_deliveries_per_s if per_delivery else saturated.offered_messages_per_s
        achieved = saturated.achieved_deliveries_per_s if per_delivery else saturated.achieved_messages_per_s
    return RampResult(
        target=target.name,
        latency_target_ms=latency_target_ms,
        best_rate=max(good) if good else None,
        saturation_offered=offered,
        saturation_achieved=achieved,
        steps=[step for _, step in phases],
        warmup=warmup,
        sessions=len(load.sessions),
        accounting=load.accounting(),
    )


async def direct(target: Target, config: Config) -> RampResult:
    """Scenario 1: `direct_pairs` 1:1 conversations, one sender each, recipients acknowledging."""
    pairs = config.direct_pairs
    accounts = await target.provision(2 * pairs, "direct")
    async with Api(target.http_url) as api:
        conversations = await bounded(api.start_direct(accounts[n], accounts[pairs + n]) for n in range(pairs))
    load = Load(config, receipts=ReceiptClock())
    try:
        sessions = await load.connect(target, [account.token for account in accounts])
        senders = [Sender(sessions[n], conversations[n], frozenset({pairs + n})) for n in range(pairs)]
        await target.settle()
        return await _ramp(
            load,
            target,
            senders,
            config.direct_rates,
            recipients=1,
            latency_target_ms=config.targets.direct_p99_ms,
            per_delivery=False,
        )
    finally:
        await load.close()


async def fanout(target: Target, config: Config) -> RampResult:
    """Scenario 2: groups of `group_size`, every member online and acknowledging, a few members sending."""
    size = config.group_size
    accounts = await target.provision(config.groups * size, "fanout")
    async with Api(target.http_url) as api:
        conversations = await bounded(
            api.create_group(accounts[g * size], accounts[g * size + 1 : (g + 1) * size], f"bench group {g}")
            for g in range(config.groups)
        )
    load = Load(config)
    try:
        sessions = await load.connect(target, [account.token for account in accounts])
        senders = []
        # Interleaved, so that consecutive sends go to different groups and from different members.
        for k in range(config.group_senders):
            for g in range(config.groups):
                members = frozenset(range(g * size, (g + 1) * size))
                sender = g * size + k
                senders.append(Sender(sessions[sender], conversations[g], members - {sender}))
        await target.settle()
        return await _ramp(
            load,
            target,
            senders,
            config.group_rates,
            recipients=size - 1,
            latency_target_ms=config.targets.fanout_p99_ms,
            per_delivery=True,
        )
    finally:
        await load.close()


async def idle(target: Target, config: Config) -> IdleResult:
    """Scenario 3: the server's memory per subscribed, idle socket, and whether all of them are held."""
    warm = max(1, min(50, config.idle_sockets // 10))
    accounts = await target.provision(warm + config.idle_sockets, "idle")
    tokens = [account.token for account in accounts]
    load = Load(config)
    try:
        # A few sockets first, so one-time costs (imports, caches, pools) are in the baseline.
        await load.connect(target, tokens[:warm])
        await target.settle()
        before = target.rss_kib()
        started = time.monotonic()
        sessions = await load.connect(target, tokens[warm:], first_index=warm)
        connect_seconds = time.monotonic() - started
        await target.settle(cap=120)
        await asyncio.sleep(config.idle_hold_seconds)
        after = target.rss_kib()
        alive = 0
        for start in range(0, len(load.sessions), 1000):
            chunk = load.sessions[start : start + 1000]
            pongs = await asyncio.gather(*(session.ping(30) for session in chunk))
            alive += sum(1 for session, pong in zip(chunk, pongs, strict=True) if pong and session.healthy)
        print(f"  {target.name:6} {len(sessions)} sockets: {(after - before) / len(sessions):.1f} KiB each", flush=True)
        return IdleResult(
            target=target.name,
            sockets=len(sessions),
            held=alive,
            warm_sockets=warm,
            connect_seconds=round(connect_seconds, 2),
            connects_per_s=round(len(sessions) / connect_seconds, 1),
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_socket=round((after - before) / len(sessions), 2),
            accounting=load.accounting(),
        )
    finally:
        await load.close()


async def storm(target: Target, config: Config) -> StormResult:
    """Scenario 4: devices with pending events (sent through the API while offline) all reconnect at once."""
    devices, events = config.storm_devices, config.storm_events
    per_group = config.max_group_members - 1  # the owner sends; every other member is a storm device
    groups = math.ceil(devices / per_group)
    setup_started = time.monotonic()
    accounts = await target.provision(devices + groups, "storm")
    owners = accounts[devices:]
    load = Load(config)
    phase = Phase("storm")
    async with Api(target.http_url) as api:
        conversations = await bounded(
            api.create_group(owners[g], accounts[g * per_group : min(devices, (g + 1) * per_group)], f"storm {g}")
            for g in range(groups)
        )

        async def pend(g: int) -> None:
            # Owners never connect: index devices + g is theirs only in message bodies.
            members = frozenset(range(g * per_group, min(devices, (g + 1) * per_group)))
            for seq in range(1, events + 1):
                key = (devices + g, seq)
                load.ledger.expect(key, 0.0, members, phase)
                await api.send(owners[g], conversations[g], f"storm-{g}-{seq}", body_of(*key))
                load.ledger.sent(key, 0.0)

        await bounded((pend(g) for g in range(groups)), concurrency=4)
    setup_seconds = time.monotonic() - setup_started
    await target.settle()
    phase.send_latencies.clear()
    try:
        started = time.monotonic()
        load.ledger.rebase(phase, started)
        tokens = [account.token for account in accounts[:devices]]
        load.sessions.extend(await open_sessions(target.ws_urls, tokens, load.traffic.on_event))
        connected = time.monotonic() - started
        await drain(phase, load.sends, grace=config.storm_timeout, cap=config.storm_timeout)
        complete = phase.delivered >= phase.expected_deliveries
        print(
            f"  {target.name:6} {devices} devices: {phase.delivered}/{phase.expected_deliveries} events in "
            f"{phase.last_arrival - started:.2f} s",
            flush=True,
        )
        return StormResult(
            target=target.name,
            devices=devices,
            events_per_device=events,
            groups=groups,
            events_expected=phase.expected_deliveries,
            delivered=phase.delivered,
            seconds_to_all_connected=round(connected, 3),
            seconds_to_first_event=round(min(phase.latencies), 3) if phase.latencies else None,
            seconds_to_all_delivered=round(phase.last_arrival - started, 3) if complete else None,
            delivery=Latency.of(phase.latencies),
            setup_seconds=round(setup_seconds, 1),
            accounting=load.accounting(),
        )
    finally:
        await load.close()


async def _pump(load: Load, sender: Sender, phase: Phase, messages: int, window: int = 8) -> None:
    """Closed loop (memory, not latency, is measured): at most `window` sends in flight."""
    sent = 0
    while sent < messages:
        if load.sends.in_flight < window:
            send_now(load.ledger, load.sends, load.tasks, sender, phase=phase, scheduled=time.monotonic())
            sent += 1
        else:
            await asyncio.sleep(0.002)
    await drain(phase, load.sends, grace=load.config.grace_seconds, cap=600)


async def memory(target: Target, config: Config) -> MemoryResult:
    """Scenario 5: server memory growth per event carried by long-lived subscriptions."""
    subscribers = config.memory_sockets
    accounts = await target.provision(1 + subscribers, "memory")
    async with Api(target.http_url) as api:
        conversation = await api.create_group(accounts[0], accounts[1:], "memory")
    load = Load(config)
    try:
        # The sender only sends: every subscription measured is a recipient's.
        sender_session = await Session.open(target.ws_urls[0], accounts[0].token, 0, load.traffic.on_event)
        load.sessions.append(sender_session)
        await load.connect(target, [account.token for account in accounts[1:]], first_index=1)
        sender = Sender(sender_session, conversation, frozenset(range(1, subscribers + 1)))
        await target.settle()
        warm_messages = max(1, config.memory_warmup_events // subscribers)
        await _pump(load, sender, Phase("warmup"), warm_messages)
        await target.settle()
        before = target.rss_kib()
        messages = max(1, config.memory_events // subscribers)
        await _pump(load, sender, Phase("measured"), messages)
        await target.settle()
        after = target.rss_kib()
        await load.settle_arrivals()
        carried = messages * subscribers
        print(f"  {target.name:6} {carried} events: {(after - before) / carried:.3f} KiB each", flush=True)
        return MemoryResult(
            target=target.name,
            sockets=subscribers,
            warmup_events=warm_messages * subscribers,
            events=carried,
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_event_per_subscription=round((after - before) / carried, 3),
            accounting=load.accounting(),
        )
    finally:
        await load.close()
