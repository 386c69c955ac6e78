// The loss chart: training loss as a line, validation loss dashed with squares (step 0 is the
// model before training), on step and loss axes with ticks. Sized from its CSS box at the
// screen's pixel density; the pointer or the arrow keys show the values at a step in a tip.
// Drawing only: the page hands it the points.

/** @typedef {{ step: number, train_loss?: number | null, val_loss?: number | null }} LossPoint */

const TRAIN = "#2563eb";
const VAL = "#dc2626";
const PAD = { left: 48, right: 12, top: 10, bottom: 34 };

/** About `n` round values (1, 2 or 5 times a power of ten) from `lo` to `hi`. */
export function ticks(lo, hi, n = 5) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw) || 10 * pow;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

/** One sentence on what the chart shows, for the page's text and for screen readers. */
export function summary(points) {
  const train = points.filter((p) => p.train_loss != null);
  const val = points.filter((p) => p.val_loss != null);
  const parts = [];
  if (train.length)
    parts.push(
      `training loss ${train[0].train_loss.toFixed(3)} at step ${train[0].step}, ` +
        `${train.at(-1).train_loss.toFixed(3)} at step ${train.at(-1).step}`,
    );
  if (val.length) {
    const at = (p) => (p.step === 0 ? "before training" : `at step ${p.step}`);
    parts.push(
      val.length === 1
        ? `validation loss ${val[0].val_loss.toFixed(3)} ${at(val[0])}`
        : `validation loss ${val[0].val_loss.toFixed(3)} ${at(val[0])}, ` +
            `${val.at(-1).val_loss.toFixed(3)} ${at(val.at(-1))}`,
    );
  }
  return parts.length ? `The chart: ${parts.join("; ")}.` : "No losses yet.";
}

/**
 * The chart on `canvas`, its tip in `tip` (a positioned element over it).
 * @param {HTMLCanvasElement} canvas
 * @param {HTMLElement} tip
 */
export function lossChart(canvas, tip) {
  /** @type {LossPoint[]} */
  let points = [];
  let total = 1;
  /** The step the tip shows (pointer or keys), or null. */
  let focus = null;

  const steps = () => [...new Set(points.map((p) => p.step))].sort((a, b) => a - b);
  const size = () => {
    const r = canvas.getBoundingClientRect();
    return [Math.max(200, r.width || 720), Math.max(120, r.height || 240)];
  };
  const scales = () => {
    const [w, h] = size();
    const values = points.flatMap((p) => [p.train_loss, p.val_loss]).filter((v) => v != null);
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (hi - lo < 1e-6) [lo, hi] = [lo - 0.5, hi + 0.5];
    const margin = (hi - lo) * 0.05;
    [lo, hi] = [lo - margin, hi + margin];
    const x = (s) => PAD.left + ((w - PAD.left - PAD.right) * s) / Math.max(1, total);
    const y = (v) => PAD.top + (h - PAD.top - PAD.bottom) * (1 - (v - lo) / (hi - lo));
    return { w, h, lo, hi, x, y };
  };

  function draw() {
    const [w, h] = size();
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const train = points.filter((p) => p.train_loss != null).map((p) => [p.step, p.train_loss]);
    const val = points.filter((p) => p.val_loss != null).map((p) => [p.step, p.val_loss]);
    canvas.dataset.points = String(train.length + val.length);
    g.font = "12px system-ui, sans-serif";
    g.strokeStyle = "#8c959f";
    g.lineWidth = 1;
    g.strokeRect(PAD.left, PAD.top, w - PAD.left - PAD.right, h - PAD.top - PAD.bottom);
    g.fillStyle = "#57606a";
    g.textAlign = "center";
    g.fillText("step", (PAD.left + w - PAD.right) / 2, h - 4);
    if (!train.length && !val.length) return;
    const s = scales();

    // Axes: steps along the bottom, losses up the left, with light grid lines.
    g.textBaseline = "top";
    for (const t of ticks(0, total, Math.max(2, Math.floor(w / 90))).filter(Number.isInteger)) {
      g.fillText(String(t), s.x(t), h - PAD.bottom + 4);
    }
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const t of ticks(s.lo, s.hi, Math.max(2, Math.floor(h / 50)))) {
      g.strokeStyle = "#eaeef2";
      g.beginPath();
      g.moveTo(PAD.left + 1, s.y(t));
      g.lineTo(w - PAD.right - 1, s.y(t));
      g.stroke();
      g.fillText(t.toFixed(s.hi - s.lo < 0.5 ? 2 : 1), PAD.left - 4, s.y(t));
    }

    /** @type {[number[][], string, number[]][]} */
    const series = [
      [train, TRAIN, []],
      [val, VAL, [6, 4]],
    ];
    for (const [pts, color, dash] of series) {
      g.strokeStyle = color;
      g.lineWidth = 2;
      g.setLineDash(dash);
      g.beginPath();
      pts.forEach(([st, v], i) => (i ? g.lineTo(s.x(st), s.y(v)) : g.moveTo(s.x(st), s.y(v))));
      g.stroke();
      g.setLineDash([]);
    }
    // Validation points as squares: few, and each one a measurement worth seeing.
    g.fillStyle = VAL;
    for (const [st, v] of val) g.fillRect(s.x(st) - 3.5, s.y(v) - 3.5, 7, 7);
    if (train.length === 1) {
      g.fillStyle = TRAIN;
      g.beginPath();
      g.arc(s.x(train[0][0]), s.y(train[0][1]), 3, 0, 2 * Math.PI);
      g.fill();
    }
    if (focus != null) {
      g.strokeStyle = "#1f2328";
      g.lineWidth = 1;
      g.beginPath();
      g.moveTo(s.x(focus), PAD.top);
      g.lineTo(s.x(focus), h - PAD.bottom);
      g.stroke();
    }
  }

  function showTip() {
    const at = points.filter((p) => p.step === focus);
    if (focus == null || !at.length) {
      tip.hidden = true;
      return;
    }
    const trainAt = at.find((p) => p.train_loss != null)?.train_loss;
    const valAt = at.find((p) => p.val_loss != null)?.val_loss;
    const parts = [focus === 0 ? "before training" : `step ${focus}`];
    if (trainAt != null) parts.push(`training loss ${trainAt.toFixed(3)}`);
    if (valAt != null) parts.push(`validation loss ${valAt.toFixed(3)}`);
    tip.textContent = parts.join(" · ");
    tip.hidden = false;
    const s = scales();
    const left = Math.min(s.x(focus) + 8, s.w - tip.offsetWidth - 4);
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${PAD.top + 4}px`;
  }

  function setFocus(step) {
    focus = step;
    draw();
    showTip();
  }

  canvas.addEventListener("pointermove", (e) => {
    const all = steps();
    if (!all.length) return;
    const s = scales();
    const r = canvas.getBoundingClientRect();
    const px = e.clientX - r.left;
    const nearest = all.reduce((a, b) => (Math.abs(s.x(b) - px) < Math.abs(s.x(a) - px) ? b : a));
    if (nearest !== focus) setFocus(nearest);
  });
  canvas.addEventListener("pointerleave", () => setFocus(null));
  canvas.addEventListener("blur", () => setFocus(null));
  canvas.addEventListener("keydown", (e) => {
    const all = steps();
    if (!all.length) return;
    const i = focus == null ? -1 : all.indexOf(focus);
    const next = {
      ArrowRight: all[Math.min(all.length - 1, i + 1)],
      ArrowLeft: all[Math.max(0, i - 1)],
      Home: all[0],
      End: all.at(-1),
      Escape: null,
    }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    setFocus(next);
  });
  new ResizeObserver(() => draw()).observe(canvas);

  return {
    /** Draws `pts` on a step axis of `totalSteps`. */
    update(/** @type {LossPoint[]} */ pts, /** @type {number} */ totalSteps) {
      points = pts;
      total = Math.max(1, totalSteps);
      if (focus != null && !points.some((p) => p.step === focus)) focus = null;
      draw();
      if (focus != null) showTip();
    },
  };
}
