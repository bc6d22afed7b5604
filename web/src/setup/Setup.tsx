import { useEffect, useRef, useState } from "react";
import { type ModelSummary, type NodeReport, fmtBytes, fmtNum } from "../shared/api";
import { Coverage } from "../dashboard/Dashboard";

// The setup wizard (`swarmllm setup --web`, volunteer/wizard.py): this machine, the swarm's coverage,
// the recommendation for the caps below (every change re-plans), and one Start button.

interface Machine {
  os: string; cpu_model: string; physical_cores: number; logical_cores: number; isa: string[];
  memory_bytes: number; available_bytes: number; disk_path: string; disk_free_bytes: number;
  gpus: { name: string; backend: string; memory_bytes: number; free_bytes: number | null }[];
}
interface CoverageRow {
  model: string; n_blocks: number; servers_per_block: number[]; demand_tokens_per_min: number;
  on_disk?: boolean; covered?: boolean;
}
interface Plan {
  model_id: string; start: number; end: number; n_blocks: number; device: string; dtype: string; threads: number;
  memory_bytes: number; cache_memory_bytes: number; tokens_per_second: number; weakest_block_before: number;
  weakest_block_after: number; download_bytes: number; reasons: string[];
}
interface Survey {
  machine: Machine; coverage: CoverageRow[]; plan: Plan | null; problem: string | null; would_run: string[];
  swarm_read_seconds_ago: number; started: { pid: number; running: boolean; status_url: string } | null;
}
interface Started { command: string[]; pid: number; status_url: string; log: string }

const CAP_FIELDS: { key: string; label: string; unit: string; testid: string; step?: string }[] = [
  { key: "max_memory_gb", label: "Max memory", unit: "GiB", testid: "cap-max-memory", step: "0.5" },
  { key: "max_gpu_memory_gb", label: "Max GPU memory", unit: "GiB", testid: "cap-max-gpu-memory", step: "0.5" },
  { key: "threads", label: "Threads", unit: "", testid: "cap-threads", step: "1" },
  { key: "max_upload_mbit", label: "Max upload", unit: "Mbit/s", testid: "cap-max-upload", step: "0.5" },
  { key: "max_download_mbit", label: "Max download", unit: "Mbit/s", testid: "cap-max-download", step: "0.5" },
];

type Caps = Record<string, string | boolean>;

async function jsonOrError<T>(res: Response): Promise<T> {
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error ?? `HTTP ${res.status}`);
  return body as T;
}

function query(caps: Caps): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(caps)) {
    if (typeof v === "boolean") { if (v) q.set(k, "true"); } else if (v.trim() !== "") q.set(k, v.trim());
  }
  return q.toString();
}

function MachinePanel({ m }: { m: Machine }) {
  return (
    <dl className="facts" data-testid="machine">
      <dt>CPU</dt><dd data-testid="machine-cpu">{m.cpu_model} · {m.physical_cores} cores ({m.logical_cores} threads)</dd>
      <dt>Instruction sets</dt><dd className="mono">{m.isa.join(" ") || "none read"}</dd>
      <dt>Memory</dt><dd data-testid="machine-memory">{fmtBytes(m.memory_bytes)} ({fmtBytes(m.available_bytes)} available)</dd>
      <dt>GPUs</dt>
      <dd data-testid="machine-gpus">{m.gpus.length ? m.gpus.map((g) => `${g.name} (${g.backend}, ${fmtBytes(g.memory_bytes)})`).join(", ") : "none found"}</dd>
      <dt>Disk</dt><dd>{fmtBytes(m.disk_free_bytes)} free at <span className="mono">{m.disk_path}</span></dd>
      <dt>System</dt><dd>{m.os}</dd>
    </dl>
  );
}

function PlanPanel({ survey }: { survey: Survey }) {
  const p = survey.plan;
  if (!p) return <p className="status-gap" data-testid="plan-problem">{survey.problem}</p>;
  return (
    <div data-testid="plan" data-model={p.model_id} data-start={p.start} data-end={p.end}>
      <p className="recommend" data-testid="plan-summary">
        Serve <strong>{p.model_id}</strong> blocks <strong className="mono">[{p.start}, {p.end})</strong> of {p.n_blocks}{" "}
        on the {p.device} in {p.dtype}, {p.threads} thread{p.threads === 1 ? "" : "s"}, {fmtBytes(p.memory_bytes)}
        {p.download_bytes ? `, after fetching ${fmtBytes(p.download_bytes)}` : ""}.
      </p>
      <p data-testid="plan-gain">
        {p.tokens_per_second > 0
          ? <>It adds <strong>{fmtNum(p.tokens_per_second)} tokens/s</strong> through its span;{" "}
            {p.weakest_block_after > 0
              ? <>the model's weakest block goes from {fmtNum(p.weakest_block_before)} to {fmtNum(p.weakest_block_after)} tokens/s.</>
              : <>other blocks of the model still need servers before a chain through it can run.</>}</>
          : <>Its speed is measured when it starts (no block of this model is on disk to time yet).</>}
      </p>
      <ul className="reasons">{p.reasons.map((r) => <li key={r}>{r}</li>)}</ul>
    </div>
  );
}

function toSummary(rows: CoverageRow[]): ModelSummary[] {
  return rows.map((r) => ({ model_id: r.model, n_blocks: r.n_blocks, coverage: r.servers_per_block,
                            complete: r.covered ?? (r.servers_per_block.length > 0 && Math.min(...r.servers_per_block) > 0) }));
}

function StartedPanel({ started, onServing }: { started: Started; onServing: () => void }) {
  const [node, setNode] = useState<NodeReport | null>(null);
  const [why, setWhy] = useState<string>("starting…");
  useEffect(() => {
    let stop = false;
    let served = false;
    const tick = async () => {
      try {
        const res = await fetch("/api/node", { cache: "no-store" });
        const body = await res.json();
        if (stop) return;
        if (res.ok) {
          setNode(body as NodeReport);
          if (body.state === "serving" && !served) { served = true; onServing(); }
        } else setWhy(body.error ?? `HTTP ${res.status}`);
      } catch (e) { if (!stop) setWhy(String(e)); }
      if (!stop) window.setTimeout(tick, 1000);
    };
    tick();
    return () => { stop = true; };
  }, []);
  return (
    <section className="panel" data-testid="started">
      <h2>Your node</h2>
      <p>Started <span className="mono">{started.command.join(" ")}</span> (pid {started.pid}). It runs on its own:
        closing this page or the wizard does not stop it. Its output: <span className="mono">{started.log}</span></p>
      <p data-testid="started-state" data-state={node?.state ?? "starting"}>
        {node ? <>State: <strong>{node.state}</strong>{node.model ? ` · ${node.model} blocks [${node.start}, ${node.end})` : ""}
          {node.paused_reason ? ` · paused: ${node.paused_reason}` : ""}</> : <span className="muted">{why}</span>}
      </p>
      <p><a href={started.status_url} target="_blank" rel="noreferrer" data-testid="status-link">
        Open your node's page ({started.status_url})</a></p>
    </section>
  );
}

export function Setup() {
  const [caps, setCaps] = useState<Caps>({ schedule: "", when_idle: false });
  const [survey, setSurvey] = useState<Survey | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [planning, setPlanning] = useState(false);
  const [started, setStarted] = useState<Started | null>(null);
  const [starting, setStarting] = useState(false);
  const seq = useRef(0);
  const [refresh, setRefresh] = useState(0);  // > 0: read the swarm again (the started node now serves)

  useEffect(() => {  // every cap change re-plans (after a short pause in typing)
    const mine = ++seq.current;
    const timer = window.setTimeout(async () => {
      setPlanning(true);
      try {
        const body = await jsonOrError<Survey>(await fetch(`/api/survey?${query(caps)}${refresh ? "&refresh=1" : ""}`, { cache: "no-store" }));
        if (mine === seq.current) { setSurvey(body); setError(null); }
      } catch (e) {
        if (mine === seq.current) setError(e instanceof Error ? e.message : String(e));
      } finally {
        if (mine === seq.current) setPlanning(false);
      }
    }, 300);
    return () => window.clearTimeout(timer);
  }, [caps, refresh]);

  const start = async () => {
    setStarting(true);
    try {
      const body = Object.fromEntries(Object.entries(caps).filter(([, v]) => v !== "" && v !== false));
      const res = await fetch("/api/start", { method: "POST", headers: { "Content-Type": "application/json" },
                                               body: JSON.stringify(body) });
      setStarted(await jsonOrError<Started>(res));
      setError(null);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setStarting(false);
    }
  };

  const set = (key: string, value: string | boolean) => setCaps((c) => ({ ...c, [key]: value }));
  return (
    <>
      <header className="topbar">
        <span className="brand">swarmllm<small>setup</small></span>
        <span className="muted" data-testid="planning">{planning ? "re-planning…" : survey ? `swarm read ${survey.swarm_read_seconds_ago} s ago` : "reading the swarm…"}</span>
        <span className="spacer" />
      </header>
      {error && <div className="notice" data-testid="error">{error}</div>}
      <main className="dash">
        <section className="panel">
          <h2>This machine</h2>
          {survey ? <MachinePanel m={survey.machine} /> : <p className="muted">detecting…</p>}
        </section>
        <section className="panel" data-testid="coverage-map">
          <h2>The swarm's coverage</h2>
          {survey ? <Coverage models={toSummary(survey.coverage)} /> : <p className="muted">reading the swarm…</p>}
          {survey && survey.coverage.some((r) => r.demand_tokens_per_min > 0) && (
            <p className="muted">Demand: {survey.coverage.filter((r) => r.demand_tokens_per_min > 0)
              .map((r) => `${r.model} ${fmtNum(r.demand_tokens_per_min, 0)} tokens/min`).join(", ")}</p>
          )}
        </section>
        <section className="panel" data-testid="caps">
          <h2>Your caps</h2>
          <div className="caps-grid">
            {CAP_FIELDS.map((f) => (
              <label className="field" key={f.key}>{f.label}
                <input type="number" min="0" step={f.step} placeholder="no cap" data-testid={f.testid}
                       value={String(caps[f.key] ?? "")} onChange={(e) => set(f.key, e.target.value)} />
                <span>{f.unit}</span>
              </label>
            ))}
            <label className="field">Schedule
              <input type="text" placeholder="always, or 22:00-07:00" data-testid="cap-schedule"
                     value={String(caps.schedule)} onChange={(e) => set("schedule", e.target.value)} />
            </label>
            <label className="field">
              <input type="checkbox" data-testid="cap-when-idle" checked={Boolean(caps.when_idle)}
                     onChange={(e) => set("when_idle", e.target.checked)} />
              only when the machine is idle
            </label>
          </div>
        </section>
        <section className="panel" data-testid="recommendation">
          <h2>Recommendation</h2>
          {survey ? <PlanPanel survey={survey} /> : <p className="muted">planning…</p>}
          {survey && <p className="muted small">Start runs: <span className="mono" data-testid="would-run">{survey.would_run.join(" ")}</span></p>}
          <button className="btn primary" data-testid="start-button" onClick={start}
                  disabled={!survey?.plan || starting || started !== null || planning || error !== null}>
            {started ? "Started" : starting ? "Starting…" : "Start"}
          </button>
        </section>
        {started && <StartedPanel started={started} onServing={() => setRefresh((n) => n + 1)} />}
      </main>
    </>
  );
}
