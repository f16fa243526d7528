// The GLB viewer: three.js (vendored under /static/vendor/three), orbit and zoom, a light control, and views of the
// mesh as shaded, wireframe or normals. Sets data-loaded="true" on its element once a model is on screen.
import * as THREE from './vendor/three/three.module.js';
import { GLTFLoader } from './vendor/three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from './vendor/three/addons/controls/OrbitControls.js';

export class Viewer {
  constructor(element) {
    this.element = element;
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0xffffff);
    this.camera = new THREE.PerspectiveCamera(35, 4 / 3, 0.01, 100);
    this.camera.position.set(0, 0.4, 2.6);
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    this.renderer.outputColorSpace = THREE.SRGBColorSpace;
    element.appendChild(this.renderer.domElement);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.enableDamping = true;
    this.ambient = new THREE.HemisphereLight(0xffffff, 0x8a8f99, 1.2);
    this.sun = new THREE.DirectionalLight(0xffffff, 1.2);
    this.sun.position.set(2, 3, 2);
    this.scene.add(this.ambient, this.sun);
    this.model = null;
    this.materials = new Map();  // mesh → its own material, to come back from wireframe/normals
    this.mode = { wireframe: false, normals: false };
    new ResizeObserver(() => this.resize()).observe(element);
    this.resize();
    this.renderer.setAnimationLoop(() => { this.controls.update(); this.renderer.render(this.scene, this.camera); });
  }

  resize() {
    const width = this.element.clientWidth || 400;
    const height = this.element.clientHeight || 300;
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
  }

  setLight(intensity) {
    this.ambient.intensity = intensity;
    this.sun.intensity = intensity;
  }

  // Load GLB bytes (an ArrayBuffer); resolves once the model is in the scene and framed.
  async load(buffer) {
    const gltf = await new GLTFLoader().parseAsync(buffer, '');
    if (this.model) this.scene.remove(this.model);
    this.model = gltf.scene;
    this.materials.clear();
    this.model.traverse((node) => { if (node.isMesh) this.materials.set(node, node.material); });
    this.scene.add(this.model);
    this.frame();
    this.apply();
    this.element.dataset.loaded = 'true';
  }

  frame() {
    const box = new THREE.Box3().setFromObject(this.model);
    const center = box.getCenter(new THREE.Vector3());
    const size = box.getSize(new THREE.Vector3()).length() || 1;
    this.controls.target.copy(center);
    this.camera.position.copy(center).add(new THREE.Vector3(0, size * 0.25, size * 1.4));
    this.camera.near = size / 100;
    this.camera.far = size * 100;
    this.camera.updateProjectionMatrix();
  }

  setMode(mode) {
    Object.assign(this.mode, mode);
    this.apply();
  }

  apply() {
    const normals = new THREE.MeshNormalMaterial();
    for (const [mesh, own] of this.materials) {
      mesh.material = this.mode.normals ? normals : own;
      const list = Array.isArray(mesh.material) ? mesh.material : [mesh.material];
      for (const material of list) material.wireframe = this.mode.wireframe;
    }
  }
}
