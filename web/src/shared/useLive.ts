import { useEffect, useState } from "react";

export type ConnMode = "connecting" | "live" | "polling" | "down";

const POLL_MS = 2_000;
const STREAM_RETRY_MS = 30_000;

/**
 * A live JSON snapshot: one GET of `url` for a fast first paint, then the `streamUrl` SSE feed.
 * If the stream errors, poll `url` every 2 s and try the stream again every 30 s.
 * (The dashboard's /api/swarm and the volunteer page's /api/node both work this way.)
 */
export function useLive<T>(url: string, streamUrl: string): { snap: T | null; mode: ConnMode; error: string | null } {
  const [snap, setSnap] = useState<T | null>(null);
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
        const res = await fetch(url, { cache: "no-store" });
        if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
        const body = (await res.json()) as T;
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
      es = new EventSource(streamUrl);
      es.onmessage = (ev) => {
        try {
          const body = JSON.parse(ev.data) as T;
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
    fetch(url, { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`GET ${url}: HTTP ${r.status}`))))
      .then((body: T) => { if (!closed) setSnap((s) => s ?? body); })
      .catch((e) => { if (!closed) setError(e instanceof Error ? e.message : String(e)); });
    connect();

    return () => {
      closed = true;
      es?.close();
      stopPolling();
      window.clearTimeout(retryTimer);
    };
  }, [url, streamUrl]);

  return { snap, mode, error };
}
