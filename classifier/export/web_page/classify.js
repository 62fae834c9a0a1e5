// Classifies images in the browser with ONNX Runtime Web and a model exported by `export.py --web`.
//
// The model graph takes decoded uint8 pixels (NCHW, any size, in the model's channels) and resizes,
// normalises and (if the run used it) mirror-averages them itself. This page only decodes images, by
// the toolkit's rules (classifier/data/images.py): EXIF orientation applied, transparency composited
// on white, colour profiles ignored, RGB -> gray with PIL's integer ITU-R 601 luma.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const REQUIRED_KEYS = ['model_name', 'classes', 'num_classes', 'input_size', 'channels'];
  const EXPORT_HINT = 'export the model with "python export.py --checkpoint runs/NAME/best.pt --web"';
  const state = {page: null, entry: null, meta: null, session: null, backend: 'wasm', items: [],
                 queue: Promise.resolve(), cameraFrames: 0, stream: null};

  class PageError extends Error {}

  function say(text, kind = 'info') {
    $('message').textContent = text;
    $('message').dataset.kind = kind;
  }

  function fail(err) {
    const known = err instanceof PageError;
    say(known ? err.message : `Something went wrong: ${err && err.message ? err.message : err}`, 'error');
    document.body.dataset.state = 'error';
  }

  function hasWebAssembly() {
    try {
      return typeof WebAssembly === 'object' && typeof WebAssembly.instantiate === 'function' &&
        WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
    } catch (err) {
      return false;
    }
  }

  async function fetchJson(url) {
    let response;
    try {
      response = await fetch(url, {cache: 'no-cache'});
    } catch (err) {
      return {missing: `${url} could not be fetched (${err.message})`};
    }
    if (!response.ok) return {missing: `${url} is missing (HTTP ${response.status})`};
    try {
      return {json: await response.json()};
    } catch (err) {
      return {missing: `${url} is not valid JSON`};
    }
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new PageError(`${src} did not load: export the folder again (it holds ` +
                                                  'the ONNX Runtime Web files the page needs)'));
      document.head.appendChild(script);
    });
  }

  // --- model and metadata -------------------------------------------------------------------------
  async function readMetadata(entry) {
    const {json, missing} = await fetchJson(entry.metadata);
    if (missing) throw new PageError(`${entry.file} has no toolkit metadata: ${missing}; ${EXPORT_HINT}`);
    const absent = REQUIRED_KEYS.filter((key) => json === null || typeof json !== 'object' || !(key in json));
    if (absent.length) {
      throw new PageError(`${entry.file} has no toolkit metadata (${absent.join(', ')} missing from ` +
                          `${entry.metadata}); ${EXPORT_HINT}`);
    }
    if (json.preprocessing_embedded !== true || json.resize_embedded !== true) {
      throw new PageError(`${entry.file} expects preprocessed input, not pixels: it was not exported for the ` +
                          `browser; ${EXPORT_HINT}`);
    }
    if (!Array.isArray(json.classes) || json.classes.length !== json.num_classes || ![1, 3].includes(json.channels)) {
      throw new PageError(`${entry.metadata} is inconsistent (classes, num_classes or channels); ${EXPORT_HINT}`);
    }
    return json;
  }

  function showModelInfo(meta) {
    const [height, width] = meta.input_size;
    const parts = [`<b>${escapeHtml(meta.model_name)}</b>`, `dataset ${escapeHtml(String(meta.dataset ?? 'unknown'))}`,
                   `input ${meta.channels}×${height}×${width} (${meta.channels === 1 ? 'gray' : 'RGB'})`,
                   `${meta.num_classes} classes`];
    if (meta.test_time_flip) parts.push('test-time flip in the graph');
    if (meta.quantization) parts.push(escapeHtml(meta.quantization));
    if (meta.toolkit_version) parts.push(`toolkit ${escapeHtml(meta.toolkit_version)}`);
    $('model-info').innerHTML = `<div>${parts.join(' · ')}</div>` +
      `<div class="classes">Classes: ${meta.classes.map(escapeHtml).join(', ')}</div>`;
  }

  function escapeHtml(text) {
    const div = document.createElement('div');
    div.textContent = String(text);
    return div.innerHTML;
  }

  function backendsFor(entry) {
    // WebGPU only for fp32: int8 QDQ models have known wrong-output bugs on WebGPU.
    return entry.precision === 'fp32' && 'gpu' in navigator ? ['wasm', 'webgpu'] : ['wasm'];
  }

  function fillSelect(select, values, chosen, label) {
    select.replaceChildren(...values.map((value) => new Option(label(value), value, false, value === chosen)));
    select.disabled = values.length < 2;
  }

  async function openModel(entry, backend) {
    document.body.dataset.state = 'loading';
    say(`Loading ${entry.file} (${entry.precision}) on ${backend.toUpperCase()}…`);
    const meta = await readMetadata(entry);
    const started = performance.now();
    let session;
    try {
      session = await ort.InferenceSession.create(entry.file, {executionProviders: [backend]});
    } catch (err) {
      if (backend !== 'wasm') {
        await openModel(entry, 'wasm');
        say(`WebGPU is not available in this browser (${err.message}); using WASM`, 'info');
        return;
      }
      throw new PageError(`ONNX Runtime Web cannot load ${entry.file}: ${err.message}`);
    }
    // one input; the logits first, then maybe "cam" (export.py --cam) or "ood_score"
    if (session.inputNames.length !== 1 || !(session.outputNames.length === 1 || session.outputNames[0] === 'logits')) {
      throw new PageError(`${entry.file} has ${session.inputNames.length} inputs and ${session.outputNames.length} ` +
                          `outputs, not one input and the logits first: not a toolkit model; ${EXPORT_HINT}`);
    }
    Object.assign(state, {entry, meta, session, backend});
    showModelInfo(meta);
    fillSelect($('model-select'), state.page.models.map((m) => m.precision), entry.precision, (p) => p);
    fillSelect($('backend-select'), backendsFor(entry), backend, (b) => (b === 'wasm' ? 'WASM' : 'WebGPU'));
    $('backend-info').textContent = `${backend === 'wasm' ? 'WASM, 1 thread' : 'WebGPU'} · ONNX Runtime Web ` +
      `${state.page.onnxruntime_web} · loaded in ${(performance.now() - started).toFixed(0)} ms`;
    say('');
    document.body.dataset.state = 'ready';
  }

  // --- images -------------------------------------------------------------------------------------
  // A decoded image on a canvas: EXIF orientation applied, no colour management, composited on white.
  async function decodeImage(blob) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, {imageOrientation: 'from-image', colorSpaceConversion: 'none',
                                              premultiplyAlpha: 'default'});
    } catch (err) {
      throw new PageError('the browser cannot decode this file as an image (readable: PNG, JPEG, GIF, BMP, WebP)');
    }
    const canvas = document.createElement('canvas');
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext('2d', {willReadFrequently: true});
    context.fillStyle = '#ffffff';
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    return canvas;
  }

  // RGBA canvas -> uint8 planar (CHW) pixels in the model's channels; gray is PIL's convert("L").
  function modelPixels(canvas, channels) {
    const {data} = canvas.getContext('2d', {willReadFrequently: true}).getImageData(0, 0, canvas.width, canvas.height);
    const count = canvas.width * canvas.height;
    const out = new Uint8Array(channels * count);
    for (let i = 0; i < count; i++) {
      const r = data[4 * i], g = data[4 * i + 1], b = data[4 * i + 2];
      if (channels === 3) {
        out[i] = r;
        out[count + i] = g;
        out[2 * count + i] = b;
      } else {
        out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
      }
    }
    return out;
  }

  function softmax(logits) {
    const max = Math.max(...logits);
    const exps = Array.from(logits, (value) => Math.exp(value - max));
    const sum = exps.reduce((a, b) => a + b, 0);
    return exps.map((value) => value / sum);
  }

  // multi-label models (metadata task "multilabel"): one sigmoid per class; the labels are the classes at
  // or above their fitted thresholds (metadata "thresholds", in class order), as the toolkit decides
  function sigmoid(logits) {
    return Array.from(logits, (value) => 1 / (1 + Math.exp(-value)));
  }

  // the "unknown" answer (classifier/trust/ood.py): an image whose score is below the metadata's
  // reject_threshold is of none of the classes. Feature scores come from the graph's "ood_score" output;
  // logit scores from the logits divided by the temperature, as the toolkit computes them.
  const LOGIT_SCORES = {
    msp: (scaled) => Math.max(...softmax(scaled)),
    energy: (scaled, t) => {
      const max = Math.max(...scaled);
      return t * (max + Math.log(scaled.reduce((sum, v) => sum + Math.exp(v - max), 0)));
    },
  };

  function unknownScore(meta, outputs, scaled) {
    if (meta.ood_score == null || meta.reject_threshold == null) return null;
    if (outputs.ood_score) return Number(outputs.ood_score.data[0]);
    const score = !isMultilabel(meta) && LOGIT_SCORES[meta.ood_score];
    return score ? score(scaled, meta.temperature || 1) : null;
  }

  function isMultilabel(meta) {
    return meta.task === 'multilabel';
  }

  function labelSet(meta, probs) {
    const cuts = Array.isArray(meta.thresholds) ? meta.thresholds : probs.map(() => 0.5);
    return probs.map((p, i) => i).filter((i) => probs[i] >= cuts[i]);
  }

  async function classifyCanvas(canvas) {
    const {session, meta} = state;
    const pixels = modelPixels(canvas, meta.channels);
    const input = new ort.Tensor('uint8', pixels, [1, meta.channels, canvas.height, canvas.width]);
    const started = performance.now();
    const outputs = await session.run({[session.inputNames[0]]: input});
    const ms = performance.now() - started;
    const raw = outputs[session.outputNames[0]].data;
    if (raw.length !== meta.classes.length) {
      throw new PageError(`the model gave ${raw.length} outputs for ${meta.classes.length} classes in its metadata`);
    }
    // calibration (classifier/trust/): the logits divided by the temperature fitted on validation
    const t = meta.temperature || 1;  // a number, or one per class (multi-label)
    const logits = Array.from(raw, (value, i) => value / (Array.isArray(t) ? t[i] : t));
    const cam = outputs.cam ? {data: outputs.cam.data, height: outputs.cam.dims[1], width: outputs.cam.dims[2]} : null;
    const score = unknownScore(meta, outputs, logits);
    return {probs: isMultilabel(meta) ? sigmoid(logits) : softmax(logits), ms, cam, score,
            unknown: score !== null && score < meta.reject_threshold};
  }

  // The resize policy's box on a height x width image (preprocess.py's policy_window, the same integer
  // arithmetic): [top, left, box height, box width]; crop: inside the image, pad: around it (top, left <= 0).
  const CROP_RATIO = [7, 8];  // preprocess.CROP_RATIO
  function policyWindow(height, width, size, policy) {
    const [th, tw] = size;
    const div = (a, b) => Math.floor(a / b);
    if (policy === 'crop') {
      const [num, den] = CROP_RATIO;
      const boxH = Math.max(1, div(Math.min(height, div(width * th, tw)) * num, den));
      const boxW = Math.max(1, div(Math.min(width, div(height * tw, th)) * num, den));
      return [div(height - boxH, 2), div(width - boxW, 2), boxH, boxW];
    }
    if (policy === 'pad') {
      const boxH = Math.max(height, div(width * th + tw - 1, tw));
      const boxW = Math.max(width, div(height * tw + th - 1, th));
      return [-div(boxH - height, 2), -div(boxW - width, 2), boxH, boxW];
    }
    return [0, 0, height, width];
  }

  // The "cam" output (the top class's activation map at the feature resolution) over the image: negative
  // values cut, scaled to 0-1, drawn red with that opacity over the part of the image the model saw (the
  // resize policy's box: the whole image when squashed, its centre when cropped; padding is cut off).
  function camOverlay(canvas, cam, meta) {
    const out = document.createElement('canvas');
    out.width = canvas.width;
    out.height = canvas.height;
    const context = out.getContext('2d');
    context.drawImage(canvas, 0, 0);
    const values = Array.from(cam.data, (v) => Math.max(v, 0));
    const top = Math.max(...values);
    const small = document.createElement('canvas');
    small.width = cam.width;
    small.height = cam.height;
    const heat = small.getContext('2d').createImageData(cam.width, cam.height);
    values.forEach((v, i) => {
      heat.data.set([255, 40, 0, Math.round(200 * (top > 0 ? v / top : 0))], 4 * i);
    });
    small.getContext('2d').putImageData(heat, 0, 0);
    context.imageSmoothingEnabled = true;
    const [boxTop, boxLeft, boxH, boxW] = policyWindow(out.height, out.width, meta.input_size,
                                                       meta.resize_policy || 'squash');
    context.drawImage(small, boxLeft, boxTop, boxW, boxH);
    out.className = 'cam';
    return out;
  }

  function render(item) {
    const figure = item.figure;
    figure.replaceChildren();
    const cam = item.result && item.result.cam;
    if (item.canvas) figure.appendChild(cam ? camOverlay(item.canvas, cam, state.meta) : item.canvas);
    const caption = document.createElement('figcaption');
    caption.innerHTML = `<div class="name">${escapeHtml(item.name)}</div>`;
    figure.dataset.file = item.name;
    figure.classList.toggle('error', Boolean(item.error));
    if (item.error) {
      figure.dataset.error = item.error;
      delete figure.dataset.probs;
      delete figure.dataset.labels;
      caption.insertAdjacentHTML('beforeend', `<div>Cannot read this image: ${escapeHtml(item.error)}</div>`);
    } else {
      const {probs, ms, score, unknown} = item.result;
      figure.dataset.probs = JSON.stringify(probs);
      if (score !== null) {
        figure.dataset.oodScore = String(score);
        figure.dataset.unknown = String(unknown);
      } else {
        delete figure.dataset.oodScore;
        delete figure.dataset.unknown;
      }
      figure.dataset.model = state.entry.precision;
      figure.dataset.backend = state.backend;
      const multilabel = isMultilabel(state.meta);
      const chosen = multilabel ? labelSet(state.meta, probs) : null;
      if (multilabel) figure.dataset.labels = JSON.stringify(chosen.map((i) => state.meta.classes[i]));
      const order = multilabel ? chosen.slice().sort((a, b) => probs[b] - probs[a])
        : probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a]).slice(0, state.page.topk);
      if (multilabel && !order.length) caption.insertAdjacentHTML('beforeend', '<div class="nolabel">no label</div>');
      if (unknown) {
        const why = `${escapeHtml(state.meta.ood_score)} score ${score.toPrecision(4)}, below ` +
          `${Number(state.meta.reject_threshold).toPrecision(4)}`;
        caption.insertAdjacentHTML('beforeend',
                                   `<div class="unknown" title="${why}">unknown: like none of the classes</div>`);
      }
      caption.insertAdjacentHTML('beforeend', '<ol>' + order.map((i) =>
        `<li>${escapeHtml(state.meta.classes[i])} ${(100 * probs[i]).toFixed(1)}%` +
        `<span class="bar" style="width:${Math.round(60 * probs[i])}px"></span></li>`).join('') + '</ol>' +
        `<div class="timing">${ms.toFixed(1)} ms · ${state.entry.precision} · ` +
        `${state.backend === 'wasm' ? 'WASM' : 'WebGPU'}</div>`);
    }
    figure.appendChild(caption);
  }

  async function process(item) {
    if (!item.canvas && !item.error) {
      try {
        item.canvas = await decodeImage(item.blob);
      } catch (err) {
        item.error = err.message;
      }
    }
    if (!item.error) item.result = await classifyCanvas(item.canvas);  // a model failure goes to fail()
    render(item);
  }

  function enqueue(task) {
    state.queue = state.queue.then(task).catch(fail);
    return state.queue;
  }

  function addImages(blobs) {
    for (const blob of blobs) {
      const figure = document.createElement('figure');
      figure.className = 'result pending';
      const item = {name: blob.name || 'image', blob, figure, canvas: null, result: null, error: null};
      state.items.push(item);
      enqueue(async () => {
        await process(item);
        figure.classList.remove('pending');
        $('results').append(figure);
      });
    }
  }

  function switchModel(precision, backend) {
    const entry = state.page.models.find((m) => m.precision === precision);
    enqueue(async () => {
      await openModel(entry, backendsFor(entry).includes(backend) ? backend : 'wasm');
      for (const item of state.items) await process(item);
    });
  }

  // --- camera -------------------------------------------------------------------------------------
  function setUpCamera() {
    if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return;  // needs https or localhost
    $('camera-button').hidden = false;
    $('camera-button').onclick = async () => {
      try {
        state.stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: 'environment'}});
      } catch (err) {
        say(`The camera is not available: ${err.message}`, 'error');
        return;
      }
      $('camera-video').srcObject = state.stream;
      $('camera-box').hidden = false;
    };
    $('capture-button').onclick = () => {
      const video = $('camera-video');
      if (!video.videoWidth) return;
      const canvas = document.createElement('canvas');
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext('2d').drawImage(video, 0, 0);
      canvas.toBlob((blob) => {
        state.cameraFrames += 1;
        addImages([new File([blob], `camera-${state.cameraFrames}.png`, {type: 'image/png'})]);
      }, 'image/png');
    };
    $('camera-stop').onclick = () => {
      if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
      $('camera-box').hidden = true;
    };
  }

  function setUpInputs() {
    $('file-input').disabled = false;
    $('file-input').addEventListener('change', (event) => {
      addImages(Array.from(event.target.files));
      event.target.value = '';
    });
    const drop = $('drop');
    for (const type of ['dragenter', 'dragover']) {
      document.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add('over');
      });
    }
    document.addEventListener('dragleave', () => drop.classList.remove('over'));
    document.addEventListener('drop', (event) => {
      event.preventDefault();
      drop.classList.remove('over');
      addImages(Array.from(event.dataTransfer.files));
    });
    $('model-select').addEventListener('change', (event) => switchModel(event.target.value, state.backend));
    $('backend-select').addEventListener('change', (event) => switchModel(state.entry.precision, event.target.value));
    setUpCamera();
  }

  async function main() {
    document.body.dataset.state = 'loading';
    if (location.protocol === 'file:') {
      throw new PageError('Browsers do not run WebAssembly or load models from file:// pages: serve this folder, ' +
                          'e.g. "python -m http.server -d FOLDER", and open http://localhost:8000/');
    }
    if (!hasWebAssembly()) {
      throw new PageError('This browser has no WebAssembly (or it is turned off), which ONNX Runtime Web needs ' +
                          'to run the model: use a current Chrome, Edge, Firefox or Safari.');
    }
    const {json: page, missing} = await fetchJson('page.json');
    if (missing || !page || !Array.isArray(page.models) || !page.models.length) {
      throw new PageError(`${missing || 'page.json lists no models'}: ${EXPORT_HINT}`);
    }
    state.page = page;
    await loadScript('ort/ort.min.js');
    ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
    // One thread: several need SharedArrayBuffer, which browsers give only to cross-origin isolated
    // pages (COOP/COEP headers), and a plain static host does not send those.
    ort.env.wasm.numThreads = 1;
    ort.env.logLevel = 'error';
    await openModel(page.models[0], 'wasm');
    setUpInputs();
  }

  window.classifierPage = {decodeImage, modelPixels, policyWindow, camOverlay};  // for tests and scripting
  state.queue = main().catch(fail);
})();
