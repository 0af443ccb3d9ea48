// The console's one script: it only improves pages that work without it (every action is a plain form).
(function () {
  'use strict';

  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (e) {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });

  var AP = window.AsciinemaPlayer;
  var player = document.getElementById('player');
  // No idleTimeLimit: the player's clock stays the recording's, so the timeline's offsets seek exactly.
  function makePlayer(startAt, speed, autoPlay) {
    var opts = { fit: 'width', controls: true, speed: speed, autoPlay: autoPlay };
    if (startAt) opts.startAt = startAt;
    window.gwPlayer = AP.create(player.dataset.src, player, opts);
  }
  if (player && AP) {
    makePlayer(player.dataset.start ? parseFloat(player.dataset.start) : 0, 1, false);
    wirePlayer();
  }
  var live = document.getElementById('live-player');
  if (live && AP) {
    window.gwPlayer = AP.create({ driver: 'eventsource', url: live.dataset.src }, live, { autoPlay: true, fit: 'width' });
  }

  // Timeline times, keystrokes and search results link into the recording: seek the player, or scroll the
  // transcript to the statement, without reloading (the links still work without JS, as ?t=SECONDS#at).
  document.querySelectorAll('a.seek[data-t]').forEach(function (a) {
    a.addEventListener('click', function (e) {
      var t = parseFloat(a.dataset.t);
      if (window.gwPlayer && player) {
        e.preventDefault();
        seekTo(window.gwPlayer, t);
        player.scrollIntoView({ block: 'nearest' });
        return;
      }
      var row = statementAt(t);
      if (row) {
        e.preventDefault();
        document.querySelectorAll('#transcript tr.target').forEach(function (r) { r.classList.remove('target'); });
        row.classList.add('target');
        row.scrollIntoView({ block: 'center' });
      }
    });
  });

  function statementAt(t) {
    var rows = document.querySelectorAll('#transcript tr.statement[data-t]');
    for (var i = 0; i < rows.length; i++) {
      if (parseFloat(rows[i].dataset.t) >= t - 1e-6) return rows[i];
    }
    return null;
  }

  function seekTo(p, t) {
    Promise.resolve(p.seek(Math.max(0, t - 0.05))).then(function () { p.play(); });
  }

  function times(kind) {
    return Array.prototype.map.call(document.querySelectorAll('#timeline li.moment.' + kind + '[data-t]'),
      function (li) { return parseFloat(li.dataset.t); }).sort(function (a, b) { return a - b; });
  }

  // Jump to the next/previous command or the next violation (refusals and kills) of the timeline; speed.
  function wirePlayer() {
    var controls = document.getElementById('player-controls');
    if (!controls) return;
    controls.hidden = false;
    var speed = document.getElementById('speed');
    speed.addEventListener('change', function () {
      Promise.resolve(window.gwPlayer.getCurrentTime()).then(function (now) {
        window.gwPlayer.dispose();
        makePlayer(now, parseFloat(speed.value), true);
      });
    });
    function jump(kind, forward) {
      var p = window.gwPlayer;
      Promise.resolve(p.getCurrentTime()).then(function (now) {
        var ts = times(kind);
        var t = forward ? ts.find(function (x) { return x > now + 0.1; })
          : ts.filter(function (x) { return x < now - 0.6; }).pop();
        if (t !== undefined) seekTo(p, t);
      });
    }
    document.getElementById('next-command').addEventListener('click', function () { jump('command', true); });
    document.getElementById('prev-command').addEventListener('click', function () { jump('command', false); });
    document.getElementById('next-violation').addEventListener('click', function () { jump('violation', true); });
  }

  // A running Postgres session: statements appended as they happen (text only, never markup).
  var table = document.querySelector('#transcript[data-live]');
  if (table) {
    var body = table.tBodies[0];
    while (body.rows.length) body.deleteRow(0); // the stream starts from the first statement
    var es = new EventSource(table.dataset.live);
    es.onmessage = function (ev) {
      var st = JSON.parse(ev.data);
      var row = body.insertRow(-1);
      row.className = 'statement';
      [st.t.toFixed(3), st.verdict, st.sql, st.rows === null ? '' : String(st.rows),
        st.ms === null ? '' : st.ms.toFixed(1), st.reason].forEach(function (v) {
        row.insertCell(-1).textContent = v;
      });
    };
    es.addEventListener('done', function () { es.close(); });
  }
})();
