"""The raw side: a process that opens the token with python-pkcs11 exactly as a vault worker
does (vault.hsm.library.TokenLibrary: OS locking switched on, one login per process, a
session for its thread), makes an equivalent key per operation, and loops the same PKCS#11
call on it when told to.

"Equivalent" is literal: the key is generated with the vault's generation template, wrapped
under the root key and unwrapped as a session object with templates.unwrapped_for_use, the
path a vault key version takes into a worker's handle cache. bench/floor.py's token-bound
servers open the token and their key in the same way.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pkcs11 import MGF, Attribute, GCMParams, KeyType, Mechanism, ObjectClass

from bench.measure import combine, timed_loop
from bench.ops import DATA_KEY_BYTES, OPS, PLAINTEXT_1K, RANDOM_BYTES, SIGN_MESSAGE

if TYPE_CHECKING:
    # vault is imported once the environment is set (open_token), not at import time.
    from vault.hsm.library import TokenLibrary

# The vault's GCM AAD is header (5) + name length (2) + key name + caller AAD (none here).
RAW_AAD = b"\x01\x00\x00\x00\x01" + b"\x00\x1f" + b"accounts/bench/keys/aes256-gcm"


def _environment(data_dir: str) -> None:
    """The same settings the server's processes get (tests.support.harness.vault_environment)."""
    for name in [name for name in os.environ if name.startswith("VAULT_")]:
        del os.environ[name]
    os.environ.pop("SOFTHSM2_CONF", None)
    os.environ["VAULT_DATA_DIR"] = data_dir


def open_token(data_dir: str) -> TokenLibrary:
    """The token of data_dir opened in this process as a vault worker opens it: the server's
    settings, OS locking, one login for the process, a session per thread (context())."""
    _environment(data_dir)
    from vault.config import Settings
    from vault.hsm.environment import use_softhsm_config
    from vault.hsm.library import TokenLibrary

    settings = Settings()  # type: ignore[call-arg]  # from the environment
    use_softhsm_config(settings)
    return TokenLibrary(settings.hsm.module, settings.hsm.token_label, settings.user_pin)


def root_key(session: Any, algorithm_name: str) -> Any:
    """The newest root that wraps algorithm_name's keys, found in session."""
    from vault.domain.algorithms import Algorithm
    from vault.hsm import objects, templates

    generations = objects.root_generations(session)
    newest = max(g for g, families in generations.items() if None not in families)
    label = templates.root_label(newest, templates.root_family(Algorithm(algorithm_name)))
    return session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)


def wrapped_key(session: Any, root: Any, algorithm_name: str) -> bytes:
    """Fresh key material for this algorithm, made with the vault's generation template and
    returned wrapped under the root key, as a vault key version is stored."""
    from pkcs11.util.ec import encode_named_curve_parameters

    from vault.domain.algorithms import Algorithm, KeyFamily
    from vault.hsm import templates

    algorithm = Algorithm(algorithm_name)
    spec = algorithm.spec
    shape = templates.shape(algorithm)
    if spec.family is KeyFamily.AES:
        material = session.generate_key(
            shape.key_type,
            spec.bits,
            capabilities=0,
            template=templates.secret_generation(algorithm, None),
        )
    else:
        public_template = templates.public_generation(algorithm)
        private_template = templates.private_generation(algorithm, None)
        if spec.family is KeyFamily.RSA:
            public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
            public, material = session.generate_keypair(
                KeyType.RSA,
                spec.bits,
                capabilities=0,
                public_template=public_template,
                private_template=private_template,
            )
        else:
            domain = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(spec.curve)},
                local=True,
            )
            public, material = domain.generate_keypair(
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                capabilities=0,
                public_template=public_template,
                private_template=private_template,
            )
        public.destroy()
    blob = bytes(root.wrap_key(material, mechanism=templates.WRAP_MECHANISM))
    material.destroy()
    return blob


def unwrapped_key(root: Any, algorithm_name: str, blob: bytes) -> Any:
    """blob as a session object of root's session, as a vault worker's handle cache holds
    it (vault.hsm.keystore: unwrapped with templates.unwrapped_for_use)."""
    from vault.domain.algorithms import Algorithm
    from vault.hsm import templates

    algorithm = Algorithm(algorithm_name)
    shape = templates.shape(algorithm)
    return root.unwrap_key(
        shape.object_class,
        shape.key_type,
        blob,
        mechanism=templates.WRAP_MECHANISM,
        capabilities=0,
        template=templates.unwrapped_for_use(algorithm),
    )


def raw_call(op_name: str, session: Any, key: Any) -> Callable[[], Any]:
    """The PKCS#11 work the vault does for one request of op_name, and nothing else."""
    if op_name == "rsa2048_pss_sign":
        pss = (Mechanism.SHA256, MGF.SHA256, 32)
        return lambda: key.sign(
            SIGN_MESSAGE, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=pss
        )
    if op_name == "p256_ecdsa_sign":
        # As the vault does: SHA-256 outside the token, then raw CKM_ECDSA on the digest.
        return lambda: key.sign(hashlib.sha256(SIGN_MESSAGE).digest(), mechanism=Mechanism.ECDSA)
    if op_name == "aes256_gcm_encrypt_1k":
        return lambda: key.encrypt(
            PLAINTEXT_1K,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(os.urandom(12), RAW_AAD, 128),
        )
    if op_name == "generate_data_key":

        def generate_data_key() -> Any:
            material = bytes(session.generate_random(DATA_KEY_BYTES * 8))
            return key.encrypt(
                material,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(os.urandom(12), RAW_AAD, 128),
            )

        return generate_data_key
    if op_name == "generate_random_32":
        return lambda: session.generate_random(RANDOM_BYTES * 8)
    raise ValueError(op_name)


def raw_main(conn: Connection, data_dir: str, op_names: list[str]) -> None:
    """Process entry point. Replies ("ready", pid), then a Sample per ("run", op, warm_until,
    seconds) command, until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us on Ctrl-C
    try:
        library = open_token(data_dir)  # holds the process's login while the loop runs
        session = library.context().session
        calls: dict[str, Callable[[], Any]] = {}
        for name in op_names:
            algorithm = OPS[name].algorithm
            key = None
            if algorithm:
                root = root_key(session, algorithm)
                key = unwrapped_key(root, algorithm, wrapped_key(session, root, algorithm))
            calls[name] = raw_call(name, session, key)
            calls[name]()  # fails here, not while measuring, if something is wrong
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        command = conn.recv()
        if command is None:
            return
        _, name, warm_until, seconds = command
        conn.send(combine([timed_loop(calls[name], warm_until, seconds)]))
