import { useEffect, useState } from "react";
import type { SwarmSnapshot } from "../shared/api";

export type ConnMode = "connecting" | "live" | "polling" | "down";

const POLL_MS = 2_000;
const STREAM_RETRY_MS = 30_000;

/**
 * The live swarm snapshot: one GET /api/swarm for a fast first paint, then the
 * /api/swarm/stream SSE feed. If the stream errors, poll /api/swarm every 2 s and
 * try the stream again every 30 s.
 */
export function useSwarm(): { snap: SwarmSnapshot | null; mode: ConnMode; error: string | null } {
  const [snap, setSnap] = useState<SwarmSnapshot | null>(null);
  const [mode, setMode] = useState<ConnMode>("connecting");
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let closed = false;
    let es: EventSource | null = null;
    let pollTimer: number | undefined;
    let retryTimer: number | undefined;
    let polling = false;

    const poll = async () => {
      try {
        const res = await fetch("/api/swarm", { cache: "no-store" });
        if (!res.ok) throw new Error(`GET /api/swarm: HTTP ${res.status}`);
        const body = (await res.json()) as SwarmSnapshot;
        if (closed) return;
        setSnap(body);
        setError(null);
        if (polling) setMode("polling");
      } catch (e) {
        if (closed) return;
        setError(e instanceof Error ? e.message : String(e));
        if (polling) setMode("down");
      }
      if (polling && !closed) pollTimer = window.setTimeout(poll, POLL_MS);
    };

    const startPolling = () => {
      if (polling || closed) return;
      polling = true;
      setMode("polling");
      poll();
    };
    const stopPolling = () => {
      polling = false;
      window.clearTimeout(pollTimer);
    };

    const connect = () => {
      if (closed || typeof EventSource === "undefined") return startPolling();
      es = new EventSource("/api/swarm/stream");
      es.onmessage = (ev) => {
        try {
          const body = JSON.parse(ev.data) as SwarmSnapshot;
          setSnap(body);
          setError(null);
          setMode("live");
          stopPolling();
        } catch {
          /* ignore a malformed event */
        }
      };
      es.onerror = () => {
        es?.close();
        es = null;
        startPolling();
        window.clearTimeout(retryTimer);
        retryTimer = window.setTimeout(connect, STREAM_RETRY_MS);
      };
    };

    // A quick first snapshot, then the live feed.
    fetch("/api/swarm", { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`GET /api/swarm: HTTP ${r.status}`))))
      .then((body: SwarmSnapshot) => { if (!closed) setSnap((s) => s ?? body); })
      .catch((e) => { if (!closed) setError(e instanceof Error ? e.message : String(e)); });
    connect();

    return () => {
      closed = true;
      es?.close();
      stopPolling();
      window.clearTimeout(retryTimer);
    };
  }, []);

  return { snap, mode, error };
}
