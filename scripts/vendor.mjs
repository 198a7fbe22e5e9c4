// Copy the browser builds of our npm dependencies into static/vendor (git-ignored).
// Run by `make assets` after `npm ci`; the lockfile pins exactly what is copied.
import { copyFileSync, mkdirSync } from "node:fs";

const files = {
  "node_modules/hls.js/dist/hls.min.js": "static/vendor/hls.min.js",
  // The watch page loads the light build (no subtitles, alternate audio, DRM, CMCD or
  // interstitials, none of which our streams use): 390 KB to fetch and compile, not 620.
  "node_modules/hls.js/dist/hls.light.min.js": "static/vendor/hls.light.min.js",
  "node_modules/tus-js-client/dist/tus.min.js": "static/vendor/tus.min.js",
  "node_modules/uplot/dist/uPlot.iife.min.js": "static/vendor/uPlot.iife.min.js",
  "node_modules/uplot/dist/uPlot.min.css": "static/vendor/uPlot.min.css",
};

mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of Object.entries(files)) {
  copyFileSync(from, to);
  console.log(`${from} -> ${to}`);
}
