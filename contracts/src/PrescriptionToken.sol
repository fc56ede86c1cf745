// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Prescription redemption tokens (double-redemption prevention only)
/// @notice A token is keyed by the address of a prescription's one-time key pair
/// (pk_presc). The chain stores counts, a validity window, a cancel flag and the
/// issuing doctor's account: nothing about the patient or the prescription content.
/// Spending needs an EIP-712 signature of the one-time key, sent by an onboarded
/// pharmacy's own account, so one-time accounts never need funds.
contract PrescriptionToken {
    /// Exactly one storage slot (20 + 2 + 4 + 4 + 1 bytes). uint32 timestamps last until 2106.
    struct Token {
        address issuer;
        uint16 remaining;
        uint32 notBefore;
        uint32 notAfter;
        bool cancelled;
    }

    struct TokenSpec {
        address token;
        uint16 redemptions;
        uint32 notBefore;
        uint32 notAfter;
    }

    bytes32 public constant SPEND_TYPEHASH =
        keccak256("Spend(address token,address dispenser,uint16 remaining)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("ErxPrescriptionToken");
    bytes32 private constant VERSION_HASH = keccak256("1");
    // secp256k1n / 2: higher s values are the malleable twin of a valid signature.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    address public admin;
    address public pendingAdmin;
    mapping(address => bool) public isIssuer;
    mapping(address => bool) public isDispenser;
    mapping(address => Token) private _tokens;

    event AdminTransferStarted(address indexed currentAdmin, address indexed pendingAdmin);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event IssuerAdded(address indexed account);
    event IssuerRemoved(address indexed account);
    event DispenserAdded(address indexed account);
    event DispenserRemoved(address indexed account);
    event TokenCreated(
        address indexed token, address indexed issuer, uint16 redemptions, uint32 notBefore, uint32 notAfter
    );
    event TokenSpent(address indexed token, address indexed dispenser, uint16 remaining);
    event TokenCancelled(address indexed token, address indexed issuer);

    error NotAdmin(address caller);
    error NotPendingAdmin(address caller);
    error NotIssuer(address caller);
    error NotDispenser(address caller);
    error NotTokenIssuer(address token, address caller);
    error ZeroAddress();
    error InvalidRedemptions(address token);
    error InvalidValidity(address token, uint32 notBefore, uint32 notAfter);
    error TokenExists(address token);
    error UnknownToken(address token);
    error Cancelled(address token);
    error NotYetValid(address token, uint32 notBefore);
    error Expired(address token, uint32 notAfter);
    error AlreadySpent(address token);
    error StaleSignature(address token, uint16 remaining);
    error BadSignature(address token);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    modifier onlyIssuer() {
        if (!isIssuer[msg.sender]) revert NotIssuer(msg.sender);
        _;
    }

    modifier onlyDispenser() {
        if (!isDispenser[msg.sender]) revert NotDispenser(msg.sender);
        _;
    }

    constructor() {
        admin = msg.sender;
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
        emit AdminTransferred(address(0), msg.sender);
    }

    // ---- governance -------------------------------------------------------------

    /// Step 1 of 2; newAdmin completes it with acceptAdmin. address(0) withdraws a pending offer.
    function transferAdmin(address newAdmin) external onlyAdmin {
        pendingAdmin = newAdmin;
        emit AdminTransferStarted(msg.sender, newAdmin);
    }

    function acceptAdmin() external {
        if (msg.sender != pendingAdmin) revert NotPendingAdmin(msg.sender);
        emit AdminTransferred(admin, msg.sender);
        admin = msg.sender;
        pendingAdmin = address(0);
    }

    function addIssuer(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        isIssuer[account] = true;
        emit IssuerAdded(account);
    }

    function removeIssuer(address account) external onlyAdmin {
        isIssuer[account] = false;
        emit IssuerRemoved(account);
    }

    function addDispenser(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        isDispenser[account] = true;
        emit DispenserAdded(account);
    }

    function removeDispenser(address account) external onlyAdmin {
        isDispenser[account] = false;
        emit DispenserRemoved(account);
    }

    // ---- tokens -----------------------------------------------------------------

    function create(address token, uint16 redemptions, uint32 notBefore, uint32 notAfter) external onlyIssuer {
        _create(token, redemptions, notBefore, notAfter);
    }

    /// All-or-nothing: one existing or invalid entry reverts the whole batch.
    function createBatch(TokenSpec[] calldata specs) external onlyIssuer {
        for (uint256 i = 0; i < specs.length; ++i) {
            TokenSpec calldata s = specs[i];
            _create(s.token, s.redemptions, s.notBefore, s.notAfter);
        }
    }

    /// @param expectedRemaining the remaining count the signature was made for; it makes every
    /// authorisation single-use, since the count only ever goes down.
    /// @param signature 65-byte (r, s, v) signature of the one-time key over the EIP-712 digest of
    /// Spend(token, msg.sender, expectedRemaining), see spendDigest.
    function spend(address token, uint16 expectedRemaining, bytes calldata signature) external onlyDispenser {
        Token storage t = _tokens[token];
        if (t.issuer == address(0)) revert UnknownToken(token);
        if (t.cancelled) revert Cancelled(token);
        if (block.timestamp < t.notBefore) revert NotYetValid(token, t.notBefore);
        if (block.timestamp > t.notAfter) revert Expired(token, t.notAfter);
        uint16 remaining = t.remaining;
        if (remaining == 0) revert AlreadySpent(token);
        if (expectedRemaining != remaining) revert StaleSignature(token, remaining);
        if (_recover(spendDigest(token, msg.sender, remaining), signature) != token) revert BadSignature(token);
        unchecked {
            t.remaining = remaining - 1;
        }
        emit TokenSpent(token, msg.sender, remaining - 1);
    }

    /// Only the creating issuer, and only while still onboarded.
    function cancel(address token) external onlyIssuer {
        Token storage t = _tokens[token];
        if (t.issuer == address(0)) revert UnknownToken(token);
        if (t.issuer != msg.sender) revert NotTokenIssuer(token, msg.sender);
        if (t.cancelled) revert Cancelled(token);
        if (t.remaining == 0) revert AlreadySpent(token);
        t.cancelled = true;
        emit TokenCancelled(token, msg.sender);
    }

    // ---- views ------------------------------------------------------------------

    /// An unknown token reads as all zeros (issuer == address(0)).
    function getToken(address token) external view returns (Token memory) {
        return _tokens[token];
    }

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    function spendDigest(address token, address dispenser, uint16 remaining) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(SPEND_TYPEHASH, token, dispenser, remaining));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    // ---- internals --------------------------------------------------------------

    function _create(address token, uint16 redemptions, uint32 notBefore, uint32 notAfter) private {
        if (token == address(0)) revert ZeroAddress();
        if (redemptions == 0) revert InvalidRedemptions(token);
        if (notBefore > notAfter) revert InvalidValidity(token, notBefore, notAfter);
        if (_tokens[token].issuer != address(0)) revert TokenExists(token);
        _tokens[token] = Token(msg.sender, redemptions, notBefore, notAfter, false);
        emit TokenCreated(token, msg.sender, redemptions, notBefore, notAfter);
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// Returns address(0) for anything but a canonical 65-byte signature.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) return address(0);
        return ecrecover(digest, v, r, s);
    }
}
