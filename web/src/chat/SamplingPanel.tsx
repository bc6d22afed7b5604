/**
 * The collapsible "Sampling" panel: one number field per control in sampling.ts, empty meaning
 * "model default" (not sent). Max tokens stays in the panel's header row, visible while the rest
 * is collapsed, since it is the setting people change most.
 */
import { SAMPLING_CONTROLS, type SamplingControl, type SamplingName, type SamplingValues, invalidReason } from "./sampling";

interface Props {
  values: SamplingValues;
  onChange: (name: SamplingName, text: string) => void;
  onReset: () => void;
  open: boolean;
  onToggle: () => void;
  disabled: boolean;
}

function ControlField({ control, text, onChange, disabled }: {
  control: SamplingControl; text: string; onChange: (text: string) => void; disabled: boolean;
}) {
  const problem = invalidReason(control, text);
  return (
    <label className="field" title={problem ?? control.hint}>
      {control.label}
      <input
        type="number"
        className={problem ? "invalid" : undefined}
        data-testid={control.testId}
        placeholder="default"
        min={control.min}
        max={control.max}
        step={control.step}
        value={text}
        disabled={disabled}
        onChange={(e) => onChange(e.target.value)}
      />
    </label>
  );
}

export function SamplingPanel({ values, onChange, onReset, open, onToggle, disabled }: Props) {
  const field = (control: SamplingControl) => (
    <ControlField
      key={control.name} control={control} text={values[control.name] ?? ""} disabled={disabled}
      onChange={(text) => onChange(control.name, text)}
    />
  );
  const maxTokens = SAMPLING_CONTROLS.find((c) => c.name === "max_tokens")!;
  const rest = SAMPLING_CONTROLS.filter((c) => c !== maxTokens);
  const set = rest.filter((c) => (values[c.name] ?? "").trim() !== "");
  return (
    <section className={"sampling" + (open ? " open" : "")} data-testid="sampling-panel">
      <div className="sampling-head">
        <button type="button" className="link-button" aria-expanded={open} data-testid="sampling-toggle" onClick={onToggle}>
          {open ? "▾" : "▸"} Sampling
        </button>
        {!open && (
          <span className="muted small sampling-summary">
            {set.length ? set.map((c) => `${c.name} ${values[c.name]}`).join(" · ") : "model defaults"}
          </span>
        )}
        <span className="spacer" />
        {field(maxTokens)}
        <button type="button" className="btn small" data-testid="reset-sampling" onClick={onReset} disabled={disabled}>
          Reset to model defaults
        </button>
      </div>
      {open && <div className="sampling-grid">{rest.map(field)}</div>}
    </section>
  );
}
