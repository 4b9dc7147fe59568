// What the browser tests share: the broker binary (TOKEN_BROKER_BIN) started on a configuration,
// and Debian's Chromium launched headless by playwright-core.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

/** Starts the broker on `config` (TOML); resolves with the process and its two base URLs. */
export function startBroker(config, logLevel = "info") {
  const dir = mkdtempSync(path.join(tmpdir(), "tb-browser-"));
  const file = path.join(dir, "broker.toml");
  writeFileSync(file, config);
  const child = spawn(process.env.TOKEN_BROKER_BIN, ["serve", "--config", file], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: logLevel },
  });
  return new Promise((resolve, reject) => {
    let buffered = "";
    child.stderr.on("data", (chunk) => {
      buffered += chunk;
      for (const line of buffered.split("\n")) {
        if (line.includes("token-broker listening")) {
          const json = JSON.parse(line);
          resolve({ child, url: `http://${json.listen}`, admin: `http://${json.admin_listen}` });
        }
      }
    });
    child.on("exit", (code) => reject(new Error(`the broker exited with ${code}: ${buffered}`)));
  });
}

/** Headless Chromium (CHROMIUM, else /usr/bin/chromium), quiet and without a sandbox. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
