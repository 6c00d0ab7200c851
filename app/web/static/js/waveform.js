// A waveform per stem, drawn from the decoded audio (Web Audio's decodeAudioData) onto a canvas.

/**
 * Min and max of each of `columns` slices of the (channel-averaged) signal.
 * @param {AudioBuffer} audio @param {number} columns
 * @returns {Float32Array} pairs: [min0, max0, min1, max1, …]
 */
export function peaks(audio, columns) {
  const channels = Array.from({ length: audio.numberOfChannels }, (_, i) => audio.getChannelData(i));
  const out = new Float32Array(columns * 2);
  const per = Math.max(1, Math.floor(audio.length / columns));
  for (let c = 0; c < columns; c++) {
    let low = 0;
    let high = 0;
    const end = Math.min(audio.length, (c + 1) * per);
    for (let i = c * per; i < end; i++) {
      let sample = 0;
      for (const data of channels) sample += data[i];
      sample /= channels.length;
      if (sample < low) low = sample;
      if (sample > high) high = sample;
    }
    out[2 * c] = low;
    out[2 * c + 1] = high;
  }
  return out;
}

/**
 * Fetch, decode and draw one stem; resolves to its length in seconds (null if it could not be
 * drawn: a storage without CORS, an unknown codec; the player works without it).
 * @param {HTMLCanvasElement} canvas @param {string} url
 * @returns {Promise<number | null>}
 */
export async function drawWaveform(canvas, url) {
  try {
    const answer = await fetch(url);
    if (!answer.ok) return null;
    const bytes = await answer.arrayBuffer();
    const context = new OfflineAudioContext(1, 1, 44100);
    const audio = await context.decodeAudioData(bytes);
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 48;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const pen = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    pen.scale(ratio, ratio);
    pen.fillStyle = getComputedStyle(canvas).color || "#34d399";
    const pairs = peaks(audio, width);
    // scaled to the stem's own peak, so a quiet stem still shows its shape
    const loudest = pairs.reduce((most, v) => Math.max(most, Math.abs(v)), 0);
    const gain = loudest > 1e-4 ? 0.95 / loudest : 1;
    const middle = height / 2;
    for (let x = 0; x < width; x++) {
      const top = middle - pairs[2 * x + 1] * gain * middle;
      const bottom = middle - pairs[2 * x] * gain * middle;
      pen.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
    canvas.dataset.drawn = "true";
    return audio.duration;
  } catch {
    canvas.dataset.drawn = "false";
    return null;
  }
}
