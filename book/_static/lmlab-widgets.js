/* Loaded after require.js and before @jupyter-widgets/html-manager's embed-amd.js on pages
   with widgets (see nb_ipywidgets_js in conf.py). Keeps the embedder working offline. */
(function () {
  "use strict";
  // 1. embed-amd.js's bundles locate their icon fonts next to the requirejs URL of their module
  //    (module.uri). Map those module ids onto _static/widgets/, where build.py copied the fonts.
  //    Otherwise the fonts are requested from <page>/@jupyter-widgets/... and 404.
  var here = document.currentScript ? document.currentScript.src : "_static/lmlab-widgets.js";
  var assets = here.replace(/[?#].*$/, "").replace(/[^/]*$/, "") + "widgets/";
  window.__jupyter_widgets_assets_path__ = assets;
  if (typeof window.require === "function" && typeof window.require.config === "function") {
    var ids = {
      "@jupyter-widgets/base": "base",
      "@jupyter-widgets/base7": "base7",
      "@jupyter-widgets/controls": "controls",
      "@jupyter-widgets/controls7": "controls7",
      "@jupyter-widgets/html-manager": "html-manager",
      "@jupyter-widgets/html-manager/dist/libembed-amd": "libembed-amd",
    };
    var paths = {};
    Object.keys(ids).forEach(function (id) { paths[id] = assets + ids[id]; });
    window.require.config({ paths: paths });
  }

  // 2. The embedder typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue) whenever
  //    window.MathJax exists; the book loads MathJax 3, which has no Hub. Give every object
  //    that becomes window.MathJax a Hub.Queue that forwards to MathJax 3's typesetPromise.
  var hub = {
    Queue: function (job) {
      var mj = window.MathJax;
      var el = Array.isArray(job) ? job[2] : null;
      if (el && mj && typeof mj.typesetPromise === "function") {
        mj.typesetPromise([el]).catch(function () {});
      }
    },
  };
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) {
      try {
        Object.defineProperty(value, "Hub", { value: hub, enumerable: false, configurable: true });
      } catch (e) { /* frozen object: nothing to do */ }
    }
    return value;
  }
  var current = withHub(window.MathJax);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      enumerable: true,
      get: function () { return current; },
      set: function (value) { current = withHub(value); },
    });
  } catch (e) { /* leave MathJax alone if the property cannot be redefined */ }
})();
