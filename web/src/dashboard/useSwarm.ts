import type { SwarmSnapshot } from "../shared/api";
import { type ConnMode, useLive } from "../shared/useLive";

export type { ConnMode };

/** The live swarm snapshot: GET /api/swarm, then the /api/swarm/stream SSE feed (shared/useLive.ts). */
export function useSwarm(): { snap: SwarmSnapshot | null; mode: ConnMode; error: string | null } {
  return useLive<SwarmSnapshot>("/api/swarm", "/api/swarm/stream");
}
