// natkit lab agent: one side of an RTCPeerConnection inside a real browser, driven by the lab
// controller (natkit.lab.browser) with the same operations as the aiortc lab agent
// (natkit.lab.peers): offer / answer / accept / result / media / close. Offer and answer carry
// every candidate (gathering completes first); the controller is the signaling channel.
// Installed as an init script, so it runs before (and independently of) the page's own scripts.
'use strict';
(() => {
  if (window.natkitLab) return;
  const conns = new Map();
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function candidateCounts(sdp) {
    const out = {};
    for (const line of sdp.split(/\r?\n/)) {
      if (!line.startsWith('a=candidate:')) continue;
      const bits = line.split(/\s+/);
      const i = bits.indexOf('typ');
      if (i > 0) out[bits[i + 1]] = (out[bits[i + 1]] || 0) + 1;
    }
    return out;
  }

  function waitGathering(pc, ms) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(true); return; }
      const timer = setTimeout(() => resolve(false), ms);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(true); }
      });
    });
  }

  function make(conn, config, role) {
    if (conns.has(conn)) throw new Error(`connection ${conn} exists`);
    const pc = new RTCPeerConnection(config);
    const c = { pc, role, dc: null, open: false, inbox: [], waiters: [], echoed: 0, tRemote: null, gathered: {}, gatheringMs: null, stream: null };
    conns.set(conn, c);
    return c;
  }

  function attach(c, dc, echo) {
    c.dc = dc;
    const opened = () => { c.open = true; };
    dc.addEventListener('open', opened);
    if (dc.readyState === 'open') opened();
    dc.onmessage = (e) => {
      if (echo) { dc.send(e.data); c.echoed += 1; return; }
      const w = c.waiters.shift();
      if (w) w(e.data); else c.inbox.push(e.data);
    };
  }

  function nextMessage(c, ms) {
    if (c.inbox.length) return Promise.resolve(c.inbox.shift());
    return new Promise((resolve) => {
      const w = (m) => { clearTimeout(timer); resolve(m); };
      const timer = setTimeout(() => { const i = c.waiters.indexOf(w); if (i >= 0) c.waiters.splice(i, 1); resolve(null); }, ms);
      c.waiters.push(w);
    });
  }

  async function camera(c, media) {
    if (!media) return;
    const v = media.video || {};
    c.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: v.width || 640, height: v.height || 480, frameRate: v.fps || 30 },
      audio: media.audio !== false,
    });
    for (const track of c.stream.getTracks()) c.pc.addTrack(track, c.stream);
  }

  async function localSdp(c, t0) {
    await waitGathering(c.pc, 15000);
    c.gatheringMs = performance.now() - t0;
    const sdp = c.pc.localDescription.sdp;
    c.gathered = candidateCounts(sdp);
    return { sdp, gathered: c.gathered, gathering_ms: c.gatheringMs };
  }

  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const side = (id) => { const x = stats.get(id) || {}; return { type: x.candidateType || null, address: `${x.address || x.ip}:${x.port}`, protocol: x.protocol || null, relayProtocol: x.relayProtocol || null }; };
    return { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId), rttMs: pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null };
  }

  async function offer(conn, config, media) {
    const c = make(conn, config, 'offerer');
    attach(c, c.pc.createDataChannel('natkit-echo'), false);
    await camera(c, media);
    const t0 = performance.now();
    await c.pc.setLocalDescription(await c.pc.createOffer());
    return localSdp(c, t0);
  }

  async function answer(conn, config, sdp, media) {
    const c = make(conn, config, 'answerer');
    c.pc.ondatachannel = (e) => { attach(c, e.channel, true); c.open = true; };
    const t0 = performance.now();
    await c.pc.setRemoteDescription({ type: 'offer', sdp });
    c.tRemote = performance.now();
    await camera(c, media);
    await c.pc.setLocalDescription(await c.pc.createAnswer());
    return localSdp(c, t0);
  }

  async function accept(conn, sdp) {
    const c = conns.get(conn);
    c.tRemote = performance.now();
    await c.pc.setRemoteDescription({ type: 'answer', sdp });
    return {};
  }

  // Wait (at most timeoutS) for the data channel; the offerer sends `messages` messages that the
  // answerer echoes back (every one crosses both ways), then both read the selected pair from getStats.
  // libwebrtc keeps checking after it has a working pair and switches to a better one when it
  // succeeds. While the selected pair is relayed and a pair without a relay candidate is still
  // being checked, watch (at most `ms`) and return the pair the agent ends up with.
  // The controlled side (`waitNomination`) also waits while a direct pair has succeeded but is not
  // selected yet: it switches when the controlling side's nomination (USE-CANDIDATE) arrives.
  async function settle(pc, pair, ms, waitNomination = false) {
    const until = performance.now() + Math.max(0, ms);
    const relayed = (p) => p && (p.local.type === 'relay' || p.remote.type === 'relay');
    while (relayed(pair) && performance.now() < until) {
      const stats = await pc.getStats();
      let pending = false;
      stats.forEach((s) => {
        const states = waitNomination ? ['waiting', 'in-progress', 'frozen', 'succeeded'] : ['waiting', 'in-progress', 'frozen'];
        if (s.type !== 'candidate-pair' || !states.includes(s.state)) return;
        const l = stats.get(s.localCandidateId) || {}; const r = stats.get(s.remoteCandidateId) || {};
        if (l.candidateType !== 'relay' && r.candidateType !== 'relay') pending = true;
      });
      if (!pending) break;
      await sleep(50);
      pair = (await selectedPair(pc)) || pair;
    }
    return pair;
  }

  async function result(conn, timeoutS, messages, settleS = 3) {
    const c = conns.get(conn);
    const deadline = performance.now() + timeoutS * 1000;
    let error = null;
    while (!c.open) {
      if (c.pc.connectionState === 'failed' || c.pc.iceConnectionState === 'failed') { error = 'ICE failed: no candidate pair worked'; break; }
      if (performance.now() >= deadline) { error = `not connected within the ${timeoutS}s deadline (ICE state ${c.pc.iceConnectionState})`; break; }
      await sleep(10);
    }
    const connected = c.open;
    const connectedMs = connected && c.tRemote ? performance.now() - c.tRemote : null;
    let sent = 0; let ok = 0; const rtts = [];
    let first = null; let settleMs = null;
    if (connected && c.role === 'offerer') {
      while (c.dc.readyState !== 'open' && performance.now() < deadline) await sleep(5);
      for (let i = 0; i < messages; i++) {
        if (i === messages - 1) {
          // the last message goes out once the pair has settled: an answerer that reports after
          // echoing every message then reads the pair this side ended up nominating
          first = await selectedPair(c.pc);
          const t = performance.now();
          await settle(c.pc, first, Math.min(settleS * 1000, deadline - performance.now()));
          settleMs = performance.now() - t;
        }
        const payload = `natkit-lab ${String(i).padStart(4, '0')} ${crypto.getRandomValues(new Uint32Array(4)).join('-')}`;
        const t = performance.now();
        c.dc.send(payload);
        sent += 1;
        const reply = await nextMessage(c, Math.max(50, deadline - performance.now()));
        if (reply === null) { error = `echo ${i} did not come back before the deadline`; break; }
        rtts.push(performance.now() - t);
        if (reply === payload) ok += 1; else error = `echo ${i} came back altered`;
      }
    } else if (connected) {
      while ((c.echoed < messages || !(await selectedPair(c.pc))) && performance.now() < deadline) await sleep(5);
      first = await selectedPair(c.pc);
      const t = performance.now();
      await settle(c.pc, first, Math.min(settleS * 1000, deadline - performance.now()), true);
      settleMs = performance.now() - t;
    }
    const pair = connected ? await selectedPair(c.pc) : null;
    if (!first) first = pair;
    rtts.sort((a, b) => a - b);
    return {
      role: c.role, connected, ice_state: c.pc.iceConnectionState,
      local_type: pair ? pair.local.type : null, local: pair ? pair.local.address : null,
      remote_type: pair ? pair.remote.type : null, remote: pair ? pair.remote.address : null,
      gathered: c.gathered, gathering_ms: c.gatheringMs, connected_ms: connectedMs,
      echo_sent: sent, echo_ok: ok, rtt_ms: rtts.length ? rtts[Math.floor((rtts.length - 1) / 2)] : null, error,
      first_local_type: first ? first.local.type : null, first_remote_type: first ? first.remote.type : null,
      settle_ms: settleMs,
    };
  }

  function inbound(stats) {
    const out = {};
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      out[s.kind] = {
        packets: s.packetsReceived || 0, lost: s.packetsLost || 0, jitter_ms: s.jitter != null ? s.jitter * 1000 : null,
        bytes: s.bytesReceived || 0, frames_decoded: s.framesDecoded ?? null, frames_dropped: s.framesDropped ?? null,
        fps: s.framesPerSecond ?? null, freezes: s.freezeCount ?? null, width: s.frameWidth ?? null, height: s.frameHeight ?? null,
        concealed: s.concealedSamples ?? null, samples: s.totalSamplesReceived ?? null,
      };
    });
    return out;
  }

  // Inbound RTP over `seconds`: counters at the start and the end of the window, and the pair.
  async function media(conn, seconds) {
    const c = conns.get(conn);
    const t0 = performance.now();
    const a = inbound(await c.pc.getStats());
    await sleep(seconds * 1000);
    const b = inbound(await c.pc.getStats());
    const window = (performance.now() - t0) / 1000;
    return { seconds: window, start: a, end: b, selected: await selectedPair(c.pc), state: c.pc.connectionState };
  }

  async function close(conn) {
    const c = conns.get(conn);
    conns.delete(conn);
    if (c) {
      if (c.stream) for (const t of c.stream.getTracks()) t.stop();
      try { c.pc.close(); } catch (e) { /* closing is best effort */ }
    }
    return {};
  }

  window.natkitLab = { offer, answer, accept, result, media, close, conns, userAgent: navigator.userAgent };
})();
