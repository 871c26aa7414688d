"""`ntm demo`: NTMobile live on one machine.

Builds the lab (network namespaces), starts DCs, DNS, relays and nodes, and walks through the paper's
scenarios with unmodified applications, printing what happens and why; ends with a summary table,
tears everything down (unless --keep) and exits non-zero if any step failed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ntmobile.lab import Lab, load_topology

NTM = [sys.executable, "-m", "ntmobile"]


class StepFailed(Exception):
    pass


@dataclass
class Step:
    title: str
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Demo:
    console: Console
    prefix: str = "demo"
    keep: bool = False
    steps: list[Step] = field(default_factory=list)
    labs: list[Lab] = field(default_factory=list)

    # -- helpers -----------------------------------------------------------------------------------
    def run_step(self, title: str, fn: Callable[[], str]) -> bool:
        step = Step(title)
        self.steps.append(step)
        t0 = time.monotonic()
        with self.console.status(f"[bold]{title}[/] …"):
            try:
                step.detail = fn()
                step.ok = True
            except Exception as exc:  # a failed step is reported, the demo goes on
                step.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        step.seconds = time.monotonic() - t0
        mark = "[green]✔[/]" if step.ok else "[red]✘[/]"
        self.console.print(f"{mark} [bold]{title}[/] ({step.seconds:.1f} s)")
        if step.detail:
            self.console.print(f"   {step.detail}", highlight=False)
        return step.ok

    def status(self, lab: Lab, host: str) -> dict[str, Any]:
        cp = lab.exec(host, [*NTM, "status", "--json"], check=False, timeout=10)
        return json.loads(cp.stdout) if cp.returncode == 0 else {}

    def wait_registered(self, lab: Lab, hosts: list[str], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        out = []
        for h in hosts:
            while True:
                st = self.status(lab, h)
                if st.get("registered"):
                    out.append(f"{st['name']} VIP {st['vip4']} / {st['vip6']} (NAT: {st['nat']})")
                    break
                if time.monotonic() > deadline:
                    raise StepFailed(f"{h} did not register with its DC within {timeout:.0f} s")
                time.sleep(0.1)
        return "; ".join(out)

    def decision(self, lab: Lab, dc_host: str, fqdn: str) -> dict[str, Any]:
        cp = lab.exec(dc_host, [*NTM, "dc", "status", "--json"], timeout=10)
        decisions = [d for d in json.loads(cp.stdout)["decisions"] if d["fqdn"] == fqdn]
        if not decisions:
            raise StepFailed(f"the DC logged no decision for {fqdn}")
        return decisions[-1]  # type: ignore[no-any-return]

    def show_evidence(self, d: dict[str, Any]) -> None:
        lines = [f"{d['node']} → {d['fqdn']}: {d['status']} {d['mode'] or ''} {('via ' + d['rs']) if d['rs'] else ''}"]
        lines += [f"  • {e}" for e in d["evidence"] if not e.startswith("result:")]
        self.console.print(Panel("\n".join(lines), title="DC decision and its DNS evidence", expand=False),
                           highlight=False)

    def path_to(self, lab: Lab, host: str, peer: str) -> dict[str, Any]:
        for p in self.status(lab, host).get("paths", []):
            if p["peer"] == peer:
                return p  # type: ignore[no-any-return]
        raise StepFailed(f"{host} has no path to {peer}")

    def ping(self, lab: Lab, src: str, name: str) -> str:
        cp = lab.exec(src, ["ping", "-c", "3", "-i", "0.2", "-W", "3", name], check=False, timeout=30)
        if cp.returncode != 0:
            raise StepFailed(f"ping {name} from {src} failed: {cp.stdout.strip().splitlines()[-1:]}")
        rtt = cp.stdout.strip().splitlines()[-1].split("=")[-1].strip()
        return rtt

    # -- scenarios -----------------------------------------------------------------------------------
    def scenario_nat(self) -> None:
        lab_box: list[Lab] = []

        def up() -> str:
            lab = Lab.up(load_topology("nat"), prefix=self.prefix)
            self.labs.append(lab)
            lab_box.append(lab)
            return (f"topology 'nat': {len(lab.topology.hosts)} hosts in network namespaces, up in "
                    f"{lab.state.up_seconds or 0:.1f} s (DNS root, resolver, 2 DCs, 2 relays, GN, NAT A/B)")

        if not self.run_step("Build the lab: NATs, DNS delegation, DCs, relays, nodes", up):
            return
        lab = lab_box[0]
        self.run_step("Nodes register with their DCs (VIPs, NAT detection)",
                      lambda: self.wait_registered(lab, ["mn", "cn", "gl"]))

        def gn() -> str:
            big = lab.state.big_file
            assert big is not None
            cp = lab.exec("mn", ["sh", "-c", "curl -sS -4 -m 60 -w '%{speed_download} %{remote_ip}\\n' "
                                 "-o /tmp/ntm-demo-big.bin http://www.gn.example/big.bin && "
                                 "sha256sum /tmp/ntm-demo-big.bin && rm -f /tmp/ntm-demo-big.bin"], timeout=90)
            first, second = cp.stdout.strip().splitlines()[0], cp.stdout.strip().splitlines()[-1]
            speed, vip = first.split()[0], first.split()[1]
            if second.split()[0] != big.sha256:
                raise StepFailed("checksum mismatch")
            self.show_evidence(self.decision(lab, "dca", "www.gn.example"))
            p = self.path_to(lab, "mn", "www.gn.example")
            return (f"curl from mn (behind NAT A) got {big.size >> 20} MiB, sha256 OK, "
                    f"{float(speed) * 8 / 1e6:.0f} Mbit/s; www.gn.example = VIP {vip}, path {p['mode']} via {p['rs']}")

        self.run_step("curl http://www.gn.example/ from mn through RS-N (general node)", gn)

        def rss() -> str:
            rtt = self.ping(lab, "mn", "cn.b.example")
            self.show_evidence(self.decision(lab, "dca", "cn.b.example"))
            p = self.path_to(lab, "mn", "cn.b.example")
            if p["mode"] != "RS_S":
                raise StepFailed(f"expected RS-S between two NATs, got {p['mode']}")
            return f"ping mn → cn.b.example (other DC, both behind NATs): {p['mode']} via {p['rs']}, rtt {rtt}"

        self.run_step("mn ↔ cn across two NATs and two DCs: RS-S", rss)

        def direct() -> str:
            rtt = self.ping(lab, "mn", "gl.a.example")
            p = self.path_to(lab, "mn", "gl.a.example")
            if p["mode"] != "DIRECT":
                raise StepFailed(f"expected a direct path, got {p['mode']}")
            return f"ping mn → gl.a.example (global address): {p['mode']}, mn initiates through its NAT, rtt {rtt}"

        self.run_step("mn ↔ gl (global): direct tunnel, NAT-side initiation", direct)

        def throughput() -> str:
            out = []
            for label, host, target in (("through RS-N (mn → GN)", "mn", "iperf.gn.example"),):
                cp = lab.exec(host, ["iperf3", "-c", target, "-4", "-t", "3", "-J"], timeout=60)
                bps = json.loads(cp.stdout)["end"]["sum_received"]["bits_per_second"]
                out.append(f"{label}: {bps / 1e6:.0f} Mbit/s")
            cp = lab.exec("gl", ["iperf3", "-c", lab.addr("gn", 4), "-t", "3", "-J"], timeout=60)
            bps = json.loads(cp.stdout)["end"]["sum_received"]["bits_per_second"]
            out.append(f"plain veth, no tunnel (gl → GN): {bps / 1e6:.0f} Mbit/s")
            return "; ".join(out)

        self.run_step("Short throughput comparison (iperf3, 3 s)", throughput)
        if not self.keep:
            lab.down()

    def scenario_handover(self) -> None:
        lab_box: list[Lab] = []

        def up() -> str:
            lab = Lab.up(load_topology("handover"), prefix=self.prefix + "h")
            self.labs.append(lab)
            lab_box.append(lab)
            self.wait_registered(lab, ["mn"])
            return f"topology 'handover' up in {lab.state.up_seconds or 0:.1f} s; mn starts behind NAT A"

        if not self.run_step("Build the handover lab", up):
            return
        lab = lab_box[0]

        def move() -> str:
            big = lab.state.big_file
            assert big is not None
            proc = lab.popen("mn", ["sh", "-c", "curl -sS -4 --limit-rate 8M -m 120 http://www.gn.example/big.bin "
                                    "| sha256sum"], stdout=-1, stderr=-1, text=True)
            moves = []
            result: dict[str, str] = {}

            def wait() -> None:
                out, err = proc.communicate(timeout=150)
                result["out"], result["err"] = out, err

            t = threading.Thread(target=wait)
            t.start()
            time.sleep(1.0)  # let the transfer get going before the first move
            for net in ("netb", "global", "neta"):
                lab.move("mn", net)
                moves.append(net)
                time.sleep(1.0)
            t.join(160)
            if proc.returncode != 0 or result.get("out", "").split()[:1] != [big.sha256]:
                raise StepFailed(f"transfer broke: {result.get('err', '').strip()[:200]}")
            return f"32 MiB download kept going across moves NAT A → {' → '.join(moves)}; sha256 OK"

        self.run_step("Handover while a transfer keeps running (VIPs never change)", move)
        if not self.keep:
            lab.down()

    def summary(self) -> int:
        t = Table(title="ntm demo summary")
        t.add_column("step")
        t.add_column("result")
        t.add_column("s", justify="right")
        for s in self.steps:
            t.add_row(s.title, "[green]ok[/]" if s.ok else f"[red]FAILED[/] {s.detail[:80]}", f"{s.seconds:.1f}")
        self.console.print(t)
        failed = [s for s in self.steps if not s.ok]
        if self.keep:
            names = ", ".join(lab.prefix for lab in self.labs)
            self.console.print(f"Labs kept ({names}): explore with "
                               f"`ntm lab exec --name {self.prefix} mn -- ntm status`, "
                               f"then `ntm lab down --name {self.prefix}`.")
        return 1 if failed else 0


def run_demo(*, keep: bool = False, prefix: str = "demo", console: Console | None = None) -> int:
    con = console or Console()
    demo = Demo(con, prefix=prefix, keep=keep)
    con.print(Panel("NTMobile: stable virtual IPs, NAT traversal and mobility. Every host below is a network "
                    "namespace on this machine; the apps (curl, ping, iperf3) are unmodified.", expand=False))
    try:
        demo.scenario_nat()
        demo.scenario_handover()
    finally:
        if not keep:
            for lab in demo.labs:
                lab.down()
    return demo.summary()
