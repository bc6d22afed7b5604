/**
 * The sampling controls as a table, and the request fields they produce.
 *
 * Each control holds the text the user typed; "" is its default state, meaning the field is not
 * sent and the gateway applies the model's recommended value. Only set, valid values go into the
 * request, under OpenAI's names (and the common extensions top_k, min_p, repetition_penalty).
 * Does not: know the model's defaults (the gateway does).
 */

export type SamplingName =
  | "temperature" | "top_p" | "top_k" | "min_p" | "repetition_penalty"
  | "frequency_penalty" | "presence_penalty" | "max_tokens" | "seed";

export interface SamplingControl {
  name: SamplingName;         // the request field
  label: string;
  testId: string;
  min?: number;
  max?: number;
  minExclusive?: boolean;     // the value must be above min, not equal to it
  step: number;
  integer?: boolean;
  hint: string;               // the tooltip
}

export const SAMPLING_CONTROLS: SamplingControl[] = [
  { name: "temperature", label: "Temperature", testId: "temperature", min: 0, max: 2, step: 0.1,
    hint: "Randomness: 0 always picks the likeliest token, higher is more varied (0–2)" },
  { name: "top_p", label: "Top p", testId: "top-p", min: 0, max: 1, minExclusive: true, step: 0.05,
    hint: "Sample only from the likeliest tokens whose probabilities add up to p (0–1]" },
  { name: "top_k", label: "Top k", testId: "top-k", min: 0, step: 1, integer: true,
    hint: "Sample only from the k likeliest tokens (0 = no limit)" },
  { name: "min_p", label: "Min p", testId: "min-p", min: 0, max: 1, step: 0.01,
    hint: "Drop tokens less likely than min_p times the likeliest one (0–1)" },
  { name: "repetition_penalty", label: "Repetition penalty", testId: "repetition-penalty", min: 0,
    minExclusive: true, max: 10, step: 0.05, hint: "Above 1 makes repeating earlier tokens less likely (1 = off)" },
  { name: "frequency_penalty", label: "Frequency penalty", testId: "frequency-penalty", min: -2, max: 2, step: 0.1,
    hint: "Penalise tokens by how often they already appeared (−2–2, 0 = off)" },
  { name: "presence_penalty", label: "Presence penalty", testId: "presence-penalty", min: -2, max: 2, step: 0.1,
    hint: "Penalise tokens that already appeared at all (−2–2, 0 = off)" },
  { name: "max_tokens", label: "Max tokens", testId: "max-tokens", min: 1, step: 1, integer: true,
    hint: "The longest reply, in tokens (default: the gateway's limit)" },
  { name: "seed", label: "Seed", testId: "seed", step: 1, integer: true,
    hint: "The same seed and settings give the same reply" },
];

export type SamplingValues = Partial<Record<SamplingName, string>>;

/** Why the typed text is not a valid value for the control, or null when it is (or is unset). */
export function invalidReason(control: SamplingControl, text: string | undefined): string | null {
  if (text === undefined || text.trim() === "") return null;
  const x = Number(text);
  const { label, min, max } = control;
  if (!Number.isFinite(x)) return `${label} must be a number`;
  if (control.integer && !Number.isInteger(x)) return `${label} must be a whole number`;
  if (min !== undefined && (control.minExclusive ? x <= min : x < min)) {
    return `${label} must be ${control.minExclusive ? "above" : "at least"} ${min}`;
  }
  if (max !== undefined && x > max) return `${label} must be at most ${max}`;
  return null;
}

/** The first problem among the set values, as a sentence for the page; null when all are fine. */
export function samplingProblem(values: SamplingValues): string | null {
  for (const control of SAMPLING_CONTROLS) {
    const reason = invalidReason(control, values[control.name]);
    if (reason) return reason;
  }
  return null;
}

/** The request fields for the values the user set (unset and invalid ones are left out). */
export function samplingFields(values: SamplingValues): Partial<Record<SamplingName, number>> {
  const fields: Partial<Record<SamplingName, number>> = {};
  for (const control of SAMPLING_CONTROLS) {
    const text = values[control.name];
    if (text === undefined || text.trim() === "" || invalidReason(control, text)) continue;
    fields[control.name] = Number(text);
  }
  return fields;
}
