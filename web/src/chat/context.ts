/**
 * How much of the model's context a conversation uses, for the meter under the composer.
 *
 * The limit comes from /v1/models when a model card states it (`context_length`, or vLLM's
 * `max_model_len`); the gateway's cards do not today, so this table is the one place that knows.
 * Usage is exact after a reply (the gateway's prompt_tokens + completion_tokens) and estimated
 * (characters / 4, shown with "~") before the first one or after an edit.
 */
import type { Conversation } from "./conversations";

export const CONTEXT_LIMITS: Record<string, number> = {
  "smollm2-135m": 8192,
  "gemma3-270m": 32768,
};
export const DEFAULT_CONTEXT_LIMIT = 4096;

const CHARS_PER_TOKEN = 4;

/** The fields of a /v1/models entry that may state the context (OpenAI's own cards have neither). */
export interface ModelCard {
  id: string;
  context_length?: number;
  max_model_len?: number;
}

export function contextLimit(modelId: string, card?: ModelCard): number {
  const stated = card?.context_length ?? card?.max_model_len;
  if (typeof stated === "number" && stated > 0) return stated;
  return CONTEXT_LIMITS[modelId] ?? DEFAULT_CONTEXT_LIMIT;
}

export interface ContextUse {
  tokens: number;
  exact: boolean;   // false: an estimate from characters
}

/** Tokens the conversation takes: the last reply's usage when it is the newest turn, else an estimate. */
export function contextUse(conversation: Conversation): ContextUse {
  const last = conversation.turns[conversation.turns.length - 1];
  if (last?.role === "assistant" && last.usage && !last.streaming) {
    return { tokens: last.usage.prompt_tokens + last.usage.completion_tokens, exact: true };
  }
  const chars = conversation.systemPrompt.length + conversation.turns.reduce((n, t) => n + t.content.length, 0);
  return { tokens: Math.ceil(chars / CHARS_PER_TOKEN), exact: false };
}
