// Drives the stock tus-js-client (from npm) against UDIM, as a test helper.
//
// usage: node client.mjs ENDPOINT TOKEN FILE CHUNK_SIZE STOP_AT [UPLOAD_URL]
// Uploads FILE in CHUNK_SIZE PATCHes, stopping once STOP_AT bytes are acknowledged (the
// client aborts, as a closed browser tab would), resuming UPLOAD_URL when given. Prints
// {"url", "offset", "packageId"} as JSON; packageId is the `Udim-Package-Id` of the last
// response, once the upload is complete. When the client reports failure, prints
// {"url", "error"} and exits 1.
import { readFileSync } from "node:fs";
import { Upload } from "tus-js-client";

const [endpoint, token, path, chunkSize, stopAt, uploadUrl] = process.argv.slice(2);
const file = readFileSync(path);
let packageId = null;
let upload;

const result = await new Promise((resolve, reject) => {
  upload = new Upload(file, {
    endpoint,
    uploadUrl: uploadUrl ?? null,
    chunkSize: Number(chunkSize),
    retryDelays: [],
    storeFingerprintForResuming: false,
    headers: { Authorization: `Bearer ${token}` },
    metadata: { filename: "notes.pdf", filetype: "application/pdf", data_category: "documents" },
    onAfterResponse(_req, res) {
      packageId = res.getHeader("Udim-Package-Id") ?? packageId;
    },
    onChunkComplete(_size, accepted) {
      if (accepted >= Number(stopAt) && accepted < file.length) {
        upload.abort().then(() => resolve({ url: upload.url, offset: accepted }));
      }
    },
    onSuccess() {
      resolve({ url: upload.url, offset: file.length });
    },
    onError: reject,
  });
  upload.start();
}).catch((error) => {
  console.log(JSON.stringify({ url: upload.url, error: String(error) }));
  process.exit(1);
});
console.log(JSON.stringify({ ...result, packageId }));
