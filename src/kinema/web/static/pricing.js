// The price of a run before it runs, computed exactly as the server bills it
// (kinema/domain/sizing.py plan_frames, kinema/billing/pricing.py bill): integers and BigInt, never float money.

const MICRO_PER_UNIT = 1_000_000n;

/** Python's round() on a float: the nearest integer, ties to even (the server's frame count uses it). */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Frames delivered for a duration: max(1, round(duration * fps)), the same double product as Python's. */
export function planFrames(duration, fps) {
  return Math.max(1, roundHalfEven(duration * fps));
}

/** A decimal string ("0.25", "1E+1") as {units, scale}: value = units / 10**scale, exactly. */
export function parseDecimal(text) {
  const match = /^(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(String(text).trim());
  if (!match || (match[1] === "" && !match[2])) throw new Error(`not a decimal amount: ${text}`);
  const fraction = match[2] || "";
  let units = BigInt((match[1] || "") + fraction || "0");
  let scale = fraction.length - Number(match[3] || 0);
  if (scale < 0) {
    units *= 10n ** BigInt(-scale);
    scale = 0;
  }
  return { units, scale };
}

function divideHalfUp(numerator, denominator) {
  return (2n * numerator + denominator) / (2n * denominator);
}

/** Billable milliseconds: frames / fps rounded half-up to the millisecond. */
export function billableMillis(frames, fps) {
  return divideHalfUp(BigInt(frames) * 1000n, BigInt(fps));
}

/** Seconds as the server writes them: "0.5", "3", "1.042". */
export function formatSeconds(millis) {
  const whole = millis / 1000n;
  const fraction = (millis % 1000n).toString().padStart(3, "0").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : `${whole}`;
}

/** Micro-units as the server's format_money: at least two, at most six decimals. */
export function formatMoney(micros) {
  const whole = micros / MICRO_PER_UNIT;
  const fraction = (micros % MICRO_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "").padEnd(2, "0");
  return `${whole}.${fraction}`;
}

/** The pricing table's key for a configuration, as GET /v1/apps/{app} names them. */
export function rateKey(resolution, hasAudio) {
  return `${resolution === "4K" ? "4K" : "720p/1080p"} video${hasAudio ? "+audio" : ""}`;
}

/**
 * What a run with these settings will cost, or null when the duration is not a usable number.
 * Returns {frames, seconds, rate, cost, currency, key} with amounts as the API writes them.
 */
export function priceFor(pricing, fps, { resolution, generateAudio, duration }) {
  if (typeof duration !== "number" || !Number.isFinite(duration) || duration <= 0) return null;
  const key = rateKey(resolution, generateAudio);
  const rateText = pricing?.per_second?.[key];
  if (rateText === undefined) return null;
  const frames = planFrames(duration, fps);
  const millis = billableMillis(frames, fps);
  const rate = parseDecimal(rateText);
  // cost = seconds * rate = millis * units / 10**(3 + scale), rounded half-up to micro-units
  const micros = divideHalfUp(millis * rate.units * MICRO_PER_UNIT, 10n ** BigInt(3 + rate.scale));
  const rateMicros = divideHalfUp(rate.units * MICRO_PER_UNIT, 10n ** BigInt(rate.scale));
  return {
    frames,
    seconds: formatSeconds(millis),
    rate: formatMoney(rateMicros),
    cost: formatMoney(micros),
    currency: pricing.currency,
    key,
  };
}
