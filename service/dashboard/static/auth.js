// The API key: kept in localStorage, asked for with the form in index.html
// when the API answers 401, forgotten with the top bar's button.
//
// What happens to the view shown is the router's business (app.js): it
// passes its hooks to initKey(), so this module needs no view of its own.

const KEY_STORE = "prunesearch.apiKey";

const authForm = document.getElementById("auth");
const keyInput = document.getElementById("auth-key");
const keyState = document.getElementById("keystate");

const hooks = {
  asked: () => {}, // the API refused: the view shown may stop
  given: () => {}, // a key was entered
  forgotten: () => {}, // the key was dropped
};

export function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Show the key form; refused: a key was sent and the API did not take it. */
export function askForKey(refused) {
  hooks.asked();
  document.getElementById("auth-message").textContent = refused
    ? "The API refused the saved key (unknown or revoked). Enter another one."
    : "This server needs an API key to show its jobs.";
  authForm.hidden = false;
  showKeyState();
  keyInput.focus();
}

/** The API took the key (or needs none): no form. */
export function keyAccepted() {
  authForm.hidden = true;
}

function showKeyState() {
  keyState.hidden = !localStorage.getItem(KEY_STORE);
}

export function initKey({ asked, given, forgotten }) {
  Object.assign(hooks, { asked, given, forgotten });

  authForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORE, key);
    keyInput.value = "";
    authForm.hidden = true;
    showKeyState();
    hooks.given();
  });

  document.getElementById("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    showKeyState();
    hooks.forgotten();
  });

  showKeyState();
}
