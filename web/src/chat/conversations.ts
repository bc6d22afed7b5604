/**
 * Conversations as data, and their copy in the browser's localStorage.
 *
 * Promises: loading never throws (a missing, corrupt or unreadable store gives an empty one, and
 * malformed entries are dropped one by one); saving never throws (it reports failure, e.g. a full
 * quota or storage disabled, so the page can say so and carry on in memory). A reply that was
 * still streaming when the page went away comes back marked "stopped".
 * Does not: talk to the gateway, or sync between tabs (the last tab to save wins).
 */
import type { SwarmInfo } from "../shared/api";

export const STORAGE_KEY = "swarmllm.conversations.v1";

/** Token counts the gateway reports for one reply (OpenAI's `usage`). */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

export interface Turn {
  role: "user" | "assistant";
  content: string;
  streaming?: boolean;
  stopped?: boolean;          // the user pressed Stop (or left the page mid-reply)
  finishReason?: string | null;
  info?: SwarmInfo;           // route and speed, from the final chunk
  usage?: Usage;              // from the final chunk; drives the context meter
  error?: string;
}

export interface Conversation {
  id: string;
  systemPrompt: string;       // sent as the first message (role "system") when non-empty
  turns: Turn[];
  createdAt: number;          // ms since the epoch
  updatedAt: number;
}

export interface Store {
  currentId: string | null;
  conversations: Conversation[];
}

const TITLE_CHARS = 60;

/** Not crypto.randomUUID: that exists only in secure contexts, and a LAN gateway is plain http. */
function newId(): string {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

export function newConversation(now = Date.now()): Conversation {
  return { id: newId(), systemPrompt: "", turns: [], createdAt: now, updatedAt: now };
}

/** The first line of the first user message, shortened; "New chat" before there is one. */
export function titleOf(conversation: Conversation): string {
  const first = conversation.turns.find((t) => t.role === "user" && t.content.trim());
  if (!first) return "New chat";
  const line = first.content.trim().split("\n")[0];
  return line.length > TITLE_CHARS ? `${line.slice(0, TITLE_CHARS - 1)}…` : line;
}

/** Whether the conversation has nothing worth keeping in the list. */
export function isEmpty(conversation: Conversation): boolean {
  return conversation.turns.length === 0 && !conversation.systemPrompt.trim();
}

function parseTurn(raw: unknown): Turn | null {
  if (!raw || typeof raw !== "object") return null;
  const t = raw as Record<string, unknown>;
  if ((t.role !== "user" && t.role !== "assistant") || typeof t.content !== "string") return null;
  const turn: Turn = { ...(t as unknown as Turn) };
  if (turn.streaming) {
    turn.streaming = false;
    turn.stopped = true;
  }
  return turn;
}

function parseConversation(raw: unknown): Conversation | null {
  if (!raw || typeof raw !== "object") return null;
  const c = raw as Record<string, unknown>;
  if (typeof c.id !== "string" || !Array.isArray(c.turns)) return null;
  const now = Date.now();
  return {
    id: c.id,
    systemPrompt: typeof c.systemPrompt === "string" ? c.systemPrompt : "",
    turns: c.turns.map(parseTurn).filter((t): t is Turn => t !== null),
    createdAt: typeof c.createdAt === "number" ? c.createdAt : now,
    updatedAt: typeof c.updatedAt === "number" ? c.updatedAt : now,
  };
}

/** The stored conversations, or an empty store when there are none or they cannot be read. */
export function loadStore(storage: Storage | null = safeLocalStorage()): Store {
  try {
    const text = storage?.getItem(STORAGE_KEY);
    if (!text) return { currentId: null, conversations: [] };
    const raw = JSON.parse(text);
    const conversations = (Array.isArray(raw?.conversations) ? raw.conversations : [])
      .map(parseConversation)
      .filter((c: Conversation | null): c is Conversation => c !== null);
    const currentId = typeof raw?.currentId === "string" ? raw.currentId : null;
    return { currentId, conversations };
  } catch {
    return { currentId: null, conversations: [] };
  }
}

/** Writes the store; false when the browser refused (quota full, storage disabled). */
export function saveStore(store: Store, storage: Storage | null = safeLocalStorage()): boolean {
  if (!storage) return false;
  try {
    const kept = store.conversations.filter((c) => !isEmpty(c) || c.id === store.currentId);
    storage.setItem(STORAGE_KEY, JSON.stringify({ currentId: store.currentId, conversations: kept }));
    return true;
  } catch {
    return false;
  }
}

/** window.localStorage, or null where merely touching it throws (some privacy settings do). */
function safeLocalStorage(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}
